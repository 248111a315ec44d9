#!/usr/bin/env bash
# Decoder teachers' memory and speed, weights kept compact (the default) against dequantized to f32 at
# load, side by side: SmolLM2-135M, Qwen2.5-Coder-0.5B and -1.5B on the first LIMIT review snippets,
# prompt scoring (the quickstart's sentiment prompt) and per-token top-20, each run its own
# `distill label` process (peak RSS of the whole job), rounds alternating the two residencies.
#
#   scripts/bench-decoders.sh [LIMIT (64)] [ROUNDS (3)]
#
# Prints a table and writes bench-out/decoder-memory.json. Part of scripts/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${1:-64} ROUNDS=${2:-3}
PY=${PYTHON:-python3}
./scripts/fetch-assets.sh --large
cargo build --locked --bin distill
mkdir -p bench-out
[ -f bench-out/snippets.jsonl ] || $PY - <<'PY'
import json
gold = {json.loads(l)["id"]: json.loads(l)["label"] for l in open("assets/corpora/rotten-tomatoes/gold.jsonl")}
rows = [json.loads(l) for l in open("assets/corpora/rotten-tomatoes/corpus.jsonl")]
rows = [r for r in rows if gold[r["id"]] != "plot" and r["text"].strip()][:2048]
with open("bench-out/snippets.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
PY
lscpu | grep -E "Model name|^CPU\(s\)" | tr -s ' ' >&2
$PY scripts/decoder_memory.py --distill target/debug/distill --corpus bench-out/snippets.jsonl \
  --limit "$LIMIT" --rounds "$ROUNDS" --out bench-out/decoder-memory.json \
  assets/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
  assets/models/qwen2.5-coder/qwen2.5-coder-0.5b-instruct.gguf \
  assets/models/qwen2.5-coder/qwen2.5-coder-1.5b-instruct.gguf
