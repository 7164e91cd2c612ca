#!/usr/bin/env python3
"""Counts per category and reasoning split for the chat-style router data.

Usage: python3 router/data/chat_style/stats.py [--check]

Prints a Markdown table (the one in README.md). With --check it also verifies the
schema, the 14 category names, and that no validation text is an exact or near
duplicate (lowercased word-set Jaccard > 0.7) of another text in either file;
it exits non-zero if anything fails.
"""
import itertools
import json
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOMAINS = [
    "biology", "business", "chemistry", "computer science", "economics", "engineering", "health",
    "history", "law", "math", "other", "philosophy", "physics", "psychology",
]
FILES = ["train.jsonl", "validation.jsonl"]


def load(name):
    rows = []
    with open(HERE / name, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                r = json.loads(line)
                r["_where"] = f"{name}:{n}"
                rows.append(r)
    return rows


def table(data):
    head = "| domain | " + " | ".join(f"{f} n | {f} reasoning=true" for f in FILES) + " |"
    out = [head, "|---" * (1 + 2 * len(FILES)) + "|"]
    tot = {f: [0, 0] for f in FILES}
    for d in DOMAINS:
        cells = []
        for f in FILES:
            rs = [r for r in data[f] if r["domain"] == d]
            t = sum(1 for r in rs if r["reasoning"])
            tot[f][0] += len(rs)
            tot[f][1] += t
            cells += [str(len(rs)), f"{t} ({100 * t / max(len(rs), 1):.0f}%)"]
        out.append(f"| {d} | " + " | ".join(cells) + " |")
    cells = []
    for f in FILES:
        n, t = tot[f]
        cells += [f"**{n}**", f"**{t} ({100 * t / max(n, 1):.0f}%)**"]
    out.append("| **all** | " + " | ".join(cells) + " |")
    return "\n".join(out)


def check(data):
    errors = []
    allrows = data[FILES[0]] + data[FILES[1]]
    for r in allrows:
        if set(r) - {"_where"} != {"text", "domain", "reasoning"}:
            errors.append(f"{r['_where']}: keys {sorted(set(r) - {'_where'})}")
        if r.get("domain") not in DOMAINS:
            errors.append(f"{r['_where']}: domain {r.get('domain')!r}")
        if not isinstance(r.get("reasoning"), bool):
            errors.append(f"{r['_where']}: reasoning must be true/false")
        if not str(r.get("text", "")).strip():
            errors.append(f"{r['_where']}: empty text")
    norm = lambda t: re.sub(r"[^a-z0-9]+", " ", t.lower()).strip()
    seen = {}
    for r in allrows:
        k = norm(r["text"])
        if k in seen:
            errors.append(f"exact duplicate: {seen[k]} and {r['_where']}")
        seen[k] = r["_where"]
    words = [set(re.findall(r"[a-z0-9']+", r["text"].lower())) for r in allrows]
    for a, b in itertools.combinations(range(len(allrows)), 2):
        u = words[a] | words[b]
        if u and len(words[a] & words[b]) / len(u) > 0.7:
            errors.append(f"near duplicate (Jaccard > 0.7): {allrows[a]['_where']} and {allrows[b]['_where']}")
    return errors


def main():
    data = {f: load(f) for f in FILES}
    print(table(data))
    if "--check" in sys.argv:
        errors = check(data)
        for e in errors:
            print("ERROR", e, file=sys.stderr)
        print(f"\ncheck: {len(errors)} problem(s)")
        sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
