#!/usr/bin/env python3
"""The benchmarks' texts: the first 2,048 Rotten Tomatoes review snippets (not plot summaries), in
corpus order, as {"id", "text"} JSONL at the path given (default bench-out/snippets.jsonl)."""
import json
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "bench-out/snippets.jsonl"
gold = {json.loads(l)["id"]: json.loads(l)["label"] for l in open("assets/corpora/rotten-tomatoes/gold.jsonl")}
rows = [json.loads(l) for l in open("assets/corpora/rotten-tomatoes/corpus.jsonl")]
rows = [r for r in rows if gold[r["id"]] != "plot" and r["text"].strip()][:2048]
with open(out, "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
