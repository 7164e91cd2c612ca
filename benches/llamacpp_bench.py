#!/usr/bin/env python3
"""llama.cpp (through llama-cpp-python's low-level bindings) under the `switchyard bench engine` protocol.

Usage:
  python benches/llamacpp_bench.py --model PATH --threads 2 --prompt-tokens-file FILE \
      --new-tokens 128 --concurrency 1,4,16 --repeats 3 --out result.json

`--prompt-tokens-file` is written by the Rust side:
  {"prefill_prompt": [ids...], "decode_prompts": [[ids...], ...]}
with ids from Switchyard's tokenizer (identical to llama.cpp's on the models we compare).

Protocol (mirrors server/src/bench.rs; greedy, EOS ignored, one warm-up prefill first):
  1. prefill: one llama_decode over the whole prefill_prompt (sequence 0, logits only for the last
     token) plus the argmax of that last token = the first generated token. prefill_tok_s =
     len(prefill_prompt) / that time.
  2. decode at batch 1: right after that prefill, `--new-tokens` single-token llama_decode steps,
     each followed by an argmax on the CPU. decode_tok_s = new_tokens / time of those steps.
  3. score: one llama_decode over the whole prefill_prompt with logits for every token, then the
     log-softmax of each row at the next prompt token (numpy, float64 sums): the prompt's
     log-probabilities, as an evaluation harness asks for them. score_tok_s = len / that time.
  4. aggregate at concurrency N: the first N decode_prompts are prefilled in ONE llama_decode
     (sequence i = prompt i, logits only for each prompt's last token), then `--new-tokens` steps
     where each step is ONE llama_decode of an N-token batch (one token per sequence, its own seq_id
     and position) followed by an argmax per sequence. prefill_s = time of that prefill phase
     (including the first tokens' argmax); decode_tok_s = N * new_tokens / decode-phase time.
The KV cache (llama_memory_clear) is cleared before every run, outside the timed regions.
Every figure in the JSON is the median across `--repeats`; the raw per-repeat values are kept
alongside (keys ending in `_runs`).
"""

import argparse
import ctypes
import json
import os
import statistics
import sys
import time

import numpy as np
import llama_cpp
import llama_cpp.llama_cpp as L


# Silences llama.cpp's own logging; must stay referenced for as long as llama.cpp may call it.
_QUIET = L.llama_log_callback(lambda level, text, data: None)


def log(msg):
    print(f"[llamacpp_bench] {msg}", file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="GGUF file")
    p.add_argument("--threads", type=int, required=True, help="n_threads and n_threads_batch")
    p.add_argument("--prompt-tokens-file", required=True)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated list")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument(
        "--kv-unified",
        action="store_true",
        help="one KV buffer shared by all sequences (llama.cpp's default is per-sequence streams)",
    )
    p.add_argument(
        "--flash-attn",
        choices=["auto", "on", "off"],
        default="auto",
        help="llama.cpp flash attention setting (default: llama.cpp's own default, auto)",
    )
    return p.parse_args()


class Bench:
    def __init__(self, args, prefill_prompt, decode_prompts, concurrency):
        self.new_tokens = args.new_tokens
        max_c = max(concurrency)
        n_seq_max = max(16, max_c)
        # Per-sequence room: the longest thing one sequence ever holds (+2 slack), rounded up to 256.
        longest = max(len(prefill_prompt), max(len(p) for p in decode_prompts[:max_c]))
        per_seq = -(-(longest + args.new_tokens + 2) // 256) * 256
        # Without kv_unified llama.cpp splits n_ctx evenly over n_seq_max streams, so the total
        # must be n_seq_max * per_seq either way (unified: any sequence may use the whole buffer).
        n_ctx = n_seq_max * per_seq
        agg_prefill = sum(len(p) for p in decode_prompts[:max_c])
        n_batch = max(512, len(prefill_prompt), agg_prefill)

        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = L.llama_model_load_from_file(args.model.encode(), mparams)
        if not self.model:
            raise SystemExit(f"could not load {args.model}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)

        cparams = L.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch  # every prefill here is one ubatch = one graph evaluation
        cparams.n_seq_max = n_seq_max
        cparams.n_threads = args.threads
        cparams.n_threads_batch = args.threads
        cparams.kv_unified = args.kv_unified
        cparams.flash_attn_type = {"auto": -1, "off": 0, "on": 1}[args.flash_attn]
        cparams.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise SystemExit("could not create the llama.cpp context")
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(n_batch, 0, 1)
        self.config = {
            "n_ctx": L.llama_n_ctx(self.ctx),
            "n_ctx_seq": L.llama_n_ctx_seq(self.ctx),
            "n_batch": L.llama_n_batch(self.ctx),
            "n_ubatch": L.llama_n_ubatch(self.ctx),
            "n_seq_max": L.llama_n_seq_max(self.ctx),
            "kv_unified": bool(args.kv_unified),
            "flash_attn": args.flash_attn,
        }
        for i, p in enumerate(decode_prompts[:max_c]):
            if len(p) + args.new_tokens + 1 > self.config["n_ctx_seq"]:
                raise SystemExit(f"decode prompt {i} does not fit in n_ctx_seq")

    def close(self):
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)
        L.llama_backend_free()

    # --- helpers -----------------------------------------------------------------------------

    def fill(self, items):
        """items: (token, pos, seq_id, wants_logits) tuples, in batch order."""
        b = self.batch
        for i, (tok, pos, seq, out) in enumerate(items):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = 1 if out else 0
        b.n_tokens = len(items)

    def decode(self):
        rc = L.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise SystemExit(f"llama_decode returned {rc}")
        L.llama_synchronize(self.ctx)

    def argmax(self, i):
        ptr = L.llama_get_logits_ith(self.ctx, i)
        return int(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())

    def clear(self):
        L.llama_memory_clear(self.mem, True)

    # --- measurements ------------------------------------------------------------------------

    def prefill_then_decode(self, prompt, steps):
        """Returns (prefill seconds, decode seconds, generated tokens)."""
        self.clear()
        n = len(prompt)
        self.fill([(t, p, 0, p == n - 1) for p, t in enumerate(prompt)])
        t0 = time.perf_counter()
        self.decode()
        tok = self.argmax(n - 1)
        t1 = time.perf_counter()
        out = [tok]
        b = self.batch
        b.n_seq_id[0] = 1
        b.seq_id[0][0] = 0
        b.logits[0] = 1
        b.n_tokens = 1
        for s in range(steps):
            b.token[0] = tok
            b.pos[0] = n + s
            self.decode()
            tok = self.argmax(0)
            out.append(tok)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, out

    def score(self, prompt):
        """Returns (seconds, log-probabilities of prompt[1:])."""
        self.clear()
        n = len(prompt)
        self.fill([(t, p, 0, True) for p, t in enumerate(prompt)])
        t0 = time.perf_counter()
        self.decode()
        ptr = L.llama_get_logits(self.ctx)
        # llama.cpp's f32 logits, read in place; exp in f32, sums in f64 (as switchyard's
        # log-sum-exp: f32 lanes, f64 over blocks).
        logits = np.ctypeslib.as_array(ptr, shape=(n, self.n_vocab))[: n - 1]
        top = logits.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1, dtype=np.float64))
        logprobs = logits[np.arange(n - 1), prompt[1:]] - lse
        t1 = time.perf_counter()
        return t1 - t0, logprobs

    def concurrent(self, prompts, steps):
        """Returns (prefill seconds, decode seconds, generated tokens per sequence)."""
        self.clear()
        items, last = [], []
        for seq, p in enumerate(prompts):
            for pos, t in enumerate(p):
                items.append((t, pos, seq, pos == len(p) - 1))
            last.append(len(items) - 1)
        self.fill(items)
        t0 = time.perf_counter()
        self.decode()
        toks = [self.argmax(i) for i in last]
        t1 = time.perf_counter()
        outs = [[t] for t in toks]
        lens = [len(p) for p in prompts]
        n = len(prompts)
        b = self.batch
        for i in range(n):
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = i
            b.logits[i] = 1
        b.n_tokens = n
        for s in range(steps):
            for i in range(n):
                b.token[i] = toks[i]
                b.pos[i] = lens[i] + s
            self.decode()
            toks = [self.argmax(i) for i in range(n)]
            for i in range(n):
                outs[i].append(toks[i])
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, outs


def main():
    args = parse_args()
    with open(args.prompt_tokens_file) as f:
        prompts = json.load(f)
    prefill_prompt = [int(t) for t in prompts["prefill_prompt"]]
    decode_prompts = [[int(t) for t in p] for p in prompts["decode_prompts"]]
    concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not concurrency or min(concurrency) < 1:
        raise SystemExit("--concurrency needs positive integers")
    if len(decode_prompts) < max(concurrency):
        raise SystemExit(
            f"{len(decode_prompts)} decode prompts for concurrency up to {max(concurrency)}"
        )
    if not prefill_prompt or any(not p for p in decode_prompts[: max(concurrency)]):
        raise SystemExit("empty prompt in the prompt-tokens file")

    L.llama_log_set(_QUIET, ctypes.c_void_p())
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        log(
            f"warning: 1-minute load average is {load_before:.2f} before starting; other work on this "
            "machine will distort the numbers (llama.cpp's spinning thread barriers suffer most when "
            "its threads are descheduled)"
        )
    bench = Bench(args, prefill_prompt, decode_prompts, concurrency)
    system_info = L.llama_print_system_info().decode(errors="replace").strip()
    log(f"llama-cpp-python {llama_cpp.__version__}, {args.threads} threads, {bench.config}")
    log(system_info)
    steps = args.new_tokens

    # Warm-up: page the weights in and let the allocator settle (not measured).
    bench.prefill_then_decode(prefill_prompt, 2)
    bench.concurrent(decode_prompts[: max(concurrency)], 2)

    prefill_runs, decode_runs = [], []
    for r in range(args.repeats):
        pre_s, dec_s, _ = bench.prefill_then_decode(prefill_prompt, steps)
        prefill_runs.append(len(prefill_prompt) / pre_s)
        decode_runs.append(steps / dec_s)
        log(
            f"repeat {r + 1}/{args.repeats}: prefill {len(prefill_prompt)} tokens in "
            f"{pre_s * 1e3:.1f} ms = {prefill_runs[-1]:.1f} tok/s; "
            f"batch-1 decode {steps} tokens = {decode_runs[-1]:.1f} tok/s"
        )

    score_runs = []
    for r in range(args.repeats):
        secs, logprobs = bench.score(prefill_prompt)
        score_runs.append(len(prefill_prompt) / secs)
        log(
            f"repeat {r + 1}/{args.repeats}: scored {len(prefill_prompt)} tokens in "
            f"{secs * 1e3:.1f} ms = {score_runs[-1]:.1f} tok/s (mean log-probability "
            f"{logprobs.mean():.3f})"
        )

    aggregate = []
    for c in concurrency:
        rates, prefills = [], []
        for r in range(args.repeats):
            pre_s, dec_s, _ = bench.concurrent(decode_prompts[:c], steps)
            prefills.append(pre_s)
            rates.append(c * steps / dec_s)
            log(
                f"concurrency {c}, repeat {r + 1}/{args.repeats}: prefill "
                f"{sum(len(p) for p in decode_prompts[:c])} tokens in {pre_s * 1e3:.1f} ms; "
                f"decode {c}x{steps} tokens = {rates[-1]:.1f} tok/s"
            )
        aggregate.append(
            {
                "concurrency": c,
                "decode_tok_s": statistics.median(rates),
                "prefill_s": statistics.median(prefills),
                "decode_tok_s_runs": rates,
                "prefill_s_runs": prefills,
            }
        )
    bench.close()

    result = {
        "engine": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "threads": args.threads,
        "system_info": system_info,
        "prefill_tokens": len(prefill_prompt),
        "prefill_tok_s": statistics.median(prefill_runs),
        "decode_tok_s": statistics.median(decode_runs),
        "score_tok_s": statistics.median(score_runs),
        "score_tok_s_runs": score_runs,
        "aggregate": aggregate,
        "repeats": args.repeats,
        "new_tokens": steps,
        "aggregate_prefill": "one llama_decode over all N prompts (distinct seq_ids)",
        "prefill_tok_s_runs": prefill_runs,
        "decode_tok_s_runs": decode_runs,
        "context": bench.config,
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": os.getloadavg()[0],
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    log(
        f"prefill {result['prefill_tok_s']:.1f} tok/s, decode {result['decode_tok_s']:.1f} tok/s, "
        + ", ".join(f"c={a['concurrency']}: {a['decode_tok_s']:.1f} tok/s" for a in aggregate)
        + f" -> {args.out}"
    )


if __name__ == "__main__":
    main()
