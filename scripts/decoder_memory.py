#!/usr/bin/env python3
"""Peak resident memory and speed of `distill label` on real decoder teachers, weights kept compact
(the default: the file's encoding, dequantized one matrix at a time) against dequantized to f32 at load.

Each run is its own process labeling the same texts into a fresh store (prompted sentiment, the
quickstart's prompt, and the per-token top-20), so its peak RSS (`ru_maxrss` from wait4) is the
whole job's: teacher, corpus, coordinator, cache writes. Rounds alternate the two residencies so a
drift of the machine's speed moves both; the figures are medians.

    python3 scripts/decoder_memory.py --distill target/debug/distill --corpus SNIPPETS.jsonl \
        --limit 64 --rounds 3 --out bench-out/decoder-memory.json MODEL.gguf [MODEL.gguf ...]
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

PROMPT = ["--prompt", "Is this movie review positive or negative? Review: {text}", "--chat",
          "--answer-prefix", "The review is", "--choice", "fresh= positive",
          "--choice", "rotten= negative"]
TOPK = ["--output", "token-topk", "--top-k", "20", "--dtype", "f16"]


def run(distill, corpus, model, resident, output, shard_size):
    with tempfile.TemporaryDirectory() as tmp:
        args = [distill, "label", "--corpus", corpus, "--teacher", model,
                "--store", os.path.join(tmp, "cache"), "--resident-weights", resident,
                "--shard-size", str(shard_size),
                "--json"] + output
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.stdout.read(), proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if status != 0:
            raise SystemExit(f"{' '.join(args)} failed: {err.decode()[-2000:]}")
        summary = json.loads(out)
        return {"peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": wall,
                "teacher_s": summary["teacher_seconds"], "tokens": summary["tokens"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--distill", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--out", required=True)
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    with open(a.corpus) as f:
        lines = [l for l in f if l.strip()][: a.limit]
    corpus = os.path.abspath(a.out) + ".corpus.jsonl"
    with open(corpus, "w") as f:
        f.writelines(lines)
    results = []
    for model in a.models:
        size_mb = os.path.getsize(model) / 2**20
        for name, output in [("prompt scoring", PROMPT), ("token-topk k=20", TOPK)]:
            runs = {"compact": [], "f32": []}
            for _ in range(a.rounds):
                for resident in ("compact", "f32"):
                    runs[resident].append(run(a.distill, corpus, model, resident, output, a.shard_size))
            row = {"model": os.path.basename(model), "file_mb": size_mb, "output": name,
                   "texts": len(lines), "target_mb": 1.3 * size_mb + 600}
            for resident, rs in runs.items():
                row[resident] = {k: statistics.median(r[k] for r in rs if r[k] is not None)
                                 for k in ("peak_rss_mb", "wall_s", "teacher_s", "tokens")
                                 if any(r[k] is not None for r in rs)}
                row[resident]["rounds"] = rs
            row["speed_compact_over_f32"] = statistics.median(
                f["teacher_s"] / c["teacher_s"] for c, f in zip(runs["compact"], runs["f32"])
                if c["teacher_s"] and f["teacher_s"])
            cores = os.cpu_count()
            for resident in ("compact", "f32"):
                r = row[resident]
                r["tokens_per_s_per_core"] = r["tokens"] / r["teacher_s"] / cores
            results.append(row)
            c, f = row["compact"], row["f32"]
            print(f"{row['model']:<40} {name:<16} file {size_mb:>6.0f} MB  peak RSS compact "
                  f"{c['peak_rss_mb']:>6.0f} MB (target {row['target_mb']:.0f}), f32 {f['peak_rss_mb']:>6.0f} MB; "
                  f"teacher s compact {c['teacher_s']:.1f} ({c['tokens_per_s_per_core']:.0f} tok/s/core), f32 {f['teacher_s']:.1f}: "
                  f"speed {row['speed_compact_over_f32']:.2f} x f32", flush=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    os.remove(corpus)


if __name__ == "__main__":
    main()
