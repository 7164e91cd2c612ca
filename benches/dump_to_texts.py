#!/usr/bin/env python3
"""Turns a `switchyard train-lexical --head domain --dump-splits DIR` dump into a texts file for
`switchyard bench router --texts` (one JSON object per line: `text` and its `domain` label name), so
the router's decisions can be scored on the trainer's own held-out exam questions.

    python3 benches/dump_to_texts.py DIR OUT.jsonl [--split val] [--sources mmlu_pro,mmlu]

Standard library only.
"""
import argparse
import json
import os


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump", help="the --dump-splits folder (domain.jsonl, domain_labels.json)")
    ap.add_argument("out", help="the JSONL file to write")
    ap.add_argument("--split", default="val", help="which split to keep (default: val)")
    ap.add_argument(
        "--sources",
        default="mmlu_pro,mmlu",
        help="comma-separated sources to keep (default: mmlu_pro,mmlu)",
    )
    args = ap.parse_args()
    sources = set(args.sources.split(","))
    with open(os.path.join(args.dump, "domain_labels.json")) as f:
        labels = json.load(f)
    kept = 0
    with open(os.path.join(args.dump, "domain.jsonl")) as src, open(args.out, "w") as out:
        for line in src:
            row = json.loads(line)
            if row["split"] == args.split and row["source"] in sources:
                out.write(json.dumps({"text": row["text"], "domain": labels[row["label"]]}) + "\n")
                kept += 1
    print(f"wrote {kept} texts to {args.out}")


if __name__ == "__main__":
    main()
