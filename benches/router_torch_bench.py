#!/usr/bin/env python3
"""The same multi-head router checkpoint in PyTorch `transformers`, under the `switchyard bench router`
protocol, so the two can be compared side by side in one run.

Usage:
  python benches/router_torch_bench.py --router-dir router/models/default --texts-file texts.json \
      --batches 1,8,32 --iterations 50 --warmup 5 --threads 2 --max-tokens 128 --out result.json

`--texts-file` is written by the Rust side: {"texts": [...]}; batch i of size b takes texts
[(i*b) mod n ...] cyclically, exactly like the Rust side.

What is timed per batch (like the Rust side): tokenization (the router's tokenizer.json through
`tokenizers`, head + tail truncation to --max-tokens), the ModernBERT backbone once, every head in
heads.json (sequence heads: pooling + head + classifier, then softmax; token heads: head +
classifier + softmax), and the copy of the probabilities to NumPy. `torch.inference_mode()`, f32,
eager attention (sdpa gives the same numbers here), `torch.set_num_threads(--threads)`.

With `--encoder-dir` (the router's embedding signal is on), each batch also runs that sentence encoder
(all-MiniLM-L6-v2: its tokenizer.json cut to the router's `embedding.json` max_tokens, `BertModel`
cut to its `encoder_layers` when given, mean pooling, L2 normalisation) and the linear head of `embedding.safetensors`, then softmax, as the
Rust side does.
Prints nothing on stdout but writes `{"batches": {"1": {"p50_ms":..., "p99_ms":..., "runs_ms": [...]}}}`.
"""

import argparse
import json
import os
import math
import sys
import time

import numpy as np
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import BertModel, ModernBertConfig, ModernBertModel
from transformers.models.modernbert.modeling_modernbert import ModernBertPredictionHead


def quantile(values, q):
    """The q-quantile by nearest rank, as the Rust side computes it (server/src/stats.rs):
    sorted[round((n - 1) q)], halves rounded up."""
    s = sorted(values)
    return float(s[int(math.floor((len(s) - 1) * q + 0.5))])


def log(msg):
    print(f"[router_torch_bench] {msg}", file=sys.stderr, flush=True)


class Head(torch.nn.Module):
    def __init__(self, config, n_labels, task, pooling):
        super().__init__()
        self.head = ModernBertPredictionHead(config)
        self.classifier = torch.nn.Linear(config.hidden_size, n_labels)
        self.task = task
        self.pooling = pooling

    def forward(self, hidden, mask):
        if self.task == "sequence":
            if self.pooling == "cls":
                hidden = hidden[:, 0]
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)
                hidden = (hidden * m).sum(dim=1) / m.sum(dim=1)
        return torch.softmax(self.classifier(self.head(hidden)), dim=-1)


def load(router_dir):
    config = ModernBertConfig.from_pretrained(router_dir)
    config._attn_implementation = "eager"
    weights = load_file(os.path.join(router_dir, "model.safetensors"))
    backbone = ModernBertModel(config)
    missing, _ = backbone.load_state_dict(
        {k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")}, strict=False
    )
    if missing:
        raise SystemExit(f"backbone weights missing: {missing}")
    with open(os.path.join(router_dir, "heads.json")) as f:
        spec = json.load(f)["heads"]
    heads = []
    for h in spec:
        head = Head(config, len(h["id2label"]), h["task"], h.get("classifier_pooling", config.classifier_pooling))
        prefix = h["prefix"]
        head.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
        heads.append(head.eval())
    return backbone.eval(), heads


class Embedding:
    """The embedding signal: encoder, mean pooling, L2 normalisation, linear head, softmax."""

    def __init__(self, encoder_dir, router_dir):
        with open(os.path.join(router_dir, "embedding.json")) as f:
            meta = json.load(f)
        self.scale = meta["scale"]
        w = load_file(os.path.join(router_dir, "embedding.safetensors"))["weights"].float()
        self.weight, self.bias = w[:, :-1], w[:, -1]
        self.encoder = BertModel.from_pretrained(encoder_dir, attn_implementation="eager").eval()
        if meta.get("encoder_layers"):  # the router uses only the first layers
            self.encoder.encoder.layer = self.encoder.encoder.layer[: meta["encoder_layers"]]
        self.tokenizer = Tokenizer.from_file(os.path.join(encoder_dir, "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(meta["max_tokens"])

    def __call__(self, texts):
        ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        t = max(len(x) for x in ids)
        input_ids = torch.zeros((len(ids), t), dtype=torch.long)
        mask = torch.zeros((len(ids), t), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        e = torch.nn.functional.normalize((hidden * m).sum(dim=1) / m.sum(dim=1), dim=-1)
        return torch.softmax(self.scale * (e @ self.weight.T + self.bias), dim=-1).numpy()


def encode(tokenizer, texts, max_tokens):
    ids = []
    for enc in tokenizer.encode_batch(texts):
        x = enc.ids
        if len(x) > max_tokens:
            head = max_tokens * 3 // 4
            x = x[:head] + x[len(x) - (max_tokens - head):]
        ids.append(x)
    t = max(len(x) for x in ids)
    input_ids = torch.zeros((len(ids), t), dtype=torch.long)
    mask = torch.zeros((len(ids), t), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    return input_ids, mask


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--router-dir", required=True)
    p.add_argument("--texts-file", required=True)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--encoder-dir", help="run the embedding signal with this encoder too")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    backbone, heads = load(a.router_dir)
    tokenizer = Tokenizer.from_file(os.path.join(a.router_dir, "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    with open(a.texts_file) as f:
        texts = json.load(f)["texts"]
    embedding = Embedding(a.encoder_dir, a.router_dir) if a.encoder_dir else None

    out = {"torch": torch.__version__, "threads": a.threads, "embedding": bool(embedding), "batches": {}}
    with torch.inference_mode():
        for b in [int(x) for x in a.batches.split(",")]:
            runs = []
            for i in range(a.warmup + a.iterations):
                batch = [texts[(i * b + j) % len(texts)] for j in range(b)]
                start = time.perf_counter()
                input_ids, mask = encode(tokenizer, batch, a.max_tokens)
                hidden = backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
                probs = [h(hidden, mask).numpy() for h in heads]
                if embedding is not None:
                    probs.append(embedding(batch))
                elapsed = time.perf_counter() - start
                assert all(np.isfinite(x).all() for x in probs)
                if i >= a.warmup:
                    runs.append(elapsed * 1e3)
            out["batches"][str(b)] = {
                "p50_ms": quantile(runs, 0.50),
                "p99_ms": quantile(runs, 0.99),
                "runs_ms": runs,
            }
            log(f"batch {b}: p50 {out['batches'][str(b)]['p50_ms']:.2f} ms")
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
