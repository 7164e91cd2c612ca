#!/usr/bin/env python3
"""Drops new training lines that are close to the validation set, without reading them.

Usage: python3 router/data/chat_style/drop_near_validation.py NEW.jsonl [NEW2.jsonl ...] > KEPT.jsonl

A new line is dropped when its TF-IDF cosine to any line of validation.jsonl is above 0.38 (the
threshold of the hand check in README.md). TF-IDF as scikit-learn's TfidfVectorizer(sublinear_tf=True)
computes it (tokens of two or more word characters, lowercased; idf = ln((1 + n) / (1 + df)) + 1;
rows L2-normalised), fitted on train.jsonl + the new lines + validation.jsonl. Standard library only.
The second batch of training lines (README.md) went through this: 41 of 1,050 dropped.
"""
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
THRESHOLD = 0.38
TOKEN = re.compile(r"(?u)\b\w\w+\b")


def rows(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def main():
    new = [r for p in sys.argv[1:] for r in rows(p)]
    train, val = rows(HERE / "train.jsonl"), rows(HERE / "validation.jsonl")
    docs = [Counter(TOKEN.findall(r["text"].lower())) for r in train + new + val]
    df = Counter(t for d in docs for t in d)
    idf = {t: math.log((1 + len(docs)) / (1 + n)) + 1 for t, n in df.items()}

    def vector(counts):
        v = {t: (1 + math.log(c)) * idf[t] for t, c in counts.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {t: x / norm for t, x in v.items()}

    new_vecs = [vector(d) for d in docs[len(train) : len(train) + len(new)]]
    val_vecs = [vector(d) for d in docs[len(train) + len(new) :]]
    dropped = 0
    for r, v in zip(new, new_vecs):
        near = max(sum(x * w.get(t, 0.0) for t, x in v.items()) for w in val_vecs)
        if near > THRESHOLD:
            dropped += 1
            continue
        print(json.dumps(r, ensure_ascii=False))
    print(f"dropped {dropped} of {len(new)} (cosine > {THRESHOLD} to a validation line)", file=sys.stderr)


if __name__ == "__main__":
    main()
