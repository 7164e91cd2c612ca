"""Writes a random-weight ModernBERT-base-sized sequence classifier (Hugging Face layout) for speed runs.

    python3 benches/make_modernbert_base.py OUT_DIR

22 layers, hidden 768, 12 heads, intermediate 1152, vocab 50368 (answerdotai/ModernBERT-base's shapes),
14 labels. Only config.json and model.safetensors: the benchmark feeds token ids directly. Needs torch and
transformers (both are on the lent GPU machines).
"""
import sys

import torch
from transformers import ModernBertConfig, ModernBertForSequenceClassification

out = sys.argv[1]
torch.manual_seed(0)
config = ModernBertConfig(
    vocab_size=50368,
    hidden_size=768,
    intermediate_size=1152,
    num_hidden_layers=22,
    num_attention_heads=12,
    max_position_embeddings=8192,
    num_labels=14,
    id2label={i: f"label_{i}" for i in range(14)},
    label2id={f"label_{i}": i for i in range(14)},
)
ModernBertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
print("wrote", out)
