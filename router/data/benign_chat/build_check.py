"""Counts and overlap checks for router/data/benign_chat (run: python3 router/data/benign_chat/build_check.py).

Prints the counts per file and kind, and fails if a text repeats (case-folded) or if a held-out text
is a near duplicate (lowercased word-set Jaccard > 0.7) of a training text.
"""
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rows(name):
    return [json.loads(l) for l in (HERE / name).read_text(encoding="utf-8").splitlines() if l.strip()]


def words(t):
    return set(re.findall(r"\w+", t.lower()))


def main():
    train, held = rows("train.jsonl"), rows("heldout.jsonl")
    ok = True
    for name, rs in [("train.jsonl", train), ("heldout.jsonl", held)]:
        kinds = {}
        for r in rs:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        print(name, len(rs), kinds)
    seen = {}
    for r in train + held:
        k = " ".join(re.findall(r"\w+", r["text"].lower())) or r["text"]
        if k in seen:
            print("duplicate:", r["text"], "|", seen[k])
            ok = False
        seen[k] = r["text"]
    tw = [(words(r["text"]), r["text"]) for r in train]
    for r in held:
        w = words(r["text"])
        if len(w) < 3:
            continue
        for s, t in tw:
            j = len(w & s) / max(1, len(w | s))
            if j > 0.7:
                print(f"near duplicate ({j:.2f}): {r['text']!r} ~ {t!r}")
                ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
