"""What one near-context prompt does to everyone else on the server, binaries side by side.

For each `switchyard` binary given, in alternating rounds, this starts `serve` and measures:
- alone: a prompt of about `--long-tokens` tokens (max_tokens 1), time to its answer;
- mixed: a short streaming request A decoding 150 tokens; 0.5 s later the long prompt arrives;
  1.5 s after that a short request B (20 tokens). Reported: A's longest gap between two tokens,
  B's time to first token, the long prompt's time to its answer.

Needs only `httpx` (`pip install httpx`). Writes a Markdown table to stdout and `--out` (JSON).

    python3 benches/long_prompt.py --binary old=/tmp/old/switchyard --binary new=target/release/switchyard
"""

import argparse
import json
import statistics
import subprocess
import threading
import time

import httpx

MODEL = "SmolLM2-135M-Instruct"


def stream(url, prompt, max_tokens, delay, out, name):
    time.sleep(delay)
    t0 = time.time()
    times = []
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "stream": True, "temperature": 0, "ignore_eos": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                d = json.loads(line[6:])
                if d.get("choices") and d["choices"][0]["delta"].get("content"):
                    times.append(time.time())
    gaps = [b - a for a, b in zip(times, times[1:])]
    out[name] = {"ttft_s": times[0] - t0, "max_gap_s": max(gaps, default=0.0), "tokens": len(times)}


def long_request(url, words, delay, out, name):
    time.sleep(delay)
    prompt = " ".join(f"word{i % 97}" for i in range(words)) + " Summarise."
    t0 = time.time()
    r = httpx.post(url + "/v1/chat/completions", timeout=600, json={
        "model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1})
    r.raise_for_status()
    out[name] = {"total_s": time.time() - t0, "prompt_tokens": r.json()["usage"]["prompt_tokens"]}


def scenario(url, words):
    out = {}
    long_request(url, words, 0, out, "alone")
    threads = [threading.Thread(target=stream, args=(url, "Count from one to one hundred.", 150, 0, out, "A")),
               threading.Thread(target=long_request, args=(url, words, 0.5, out, "long")),
               threading.Thread(target=stream, args=(url, "Say hello.", 20, 2.0, out, "B"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def serve(binary, port):
    proc = subprocess.Popen([binary, "serve", "--port", str(port), "--no-router"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{binary} did not become ready")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", action="append", required=True, help="NAME=PATH, repeatable")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--long-words", type=int, default=1350, help="1350 words: ~3940 SmolLM2 tokens")
    ap.add_argument("--port", type=int, default=8199)
    ap.add_argument("--out", default="long-prompt.json")
    args = ap.parse_args()
    binaries = [b.split("=", 1) for b in args.binary]
    results = {name: [] for name, _ in binaries}
    for r in range(args.rounds):
        order = binaries if r % 2 == 0 else binaries[::-1]
        for name, path in order:
            proc, url = serve(path, args.port)
            try:
                results[name].append(scenario(url, args.long_words))
            finally:
                proc.terminate()
                proc.wait()
            print(f"round {r + 1} {name}: {json.dumps(results[name][-1])}", flush=True)
    json.dump(results, open(args.out, "w"), indent=1)
    med = lambda runs, k, f: statistics.median(run[k][f] for run in runs)
    tokens = results[binaries[0][0]][0]["alone"]["prompt_tokens"]
    print(f"\n| binary | long prompt alone ({tokens} tokens) | long prompt among others "
          "| A's longest gap between tokens | B's time to first token |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        print(f"| {name} | {med(runs, 'alone', 'total_s'):.1f} s | {med(runs, 'long', 'total_s'):.1f} s "
              f"| {med(runs, 'A', 'max_gap_s'):.2f} s | {med(runs, 'B', 'ttft_s'):.2f} s |")


if __name__ == "__main__":
    main()
