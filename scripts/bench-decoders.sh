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
[ -f bench-out/snippets.jsonl ] || $PY scripts/snippets.py bench-out/snippets.jsonl
lscpu | grep -E "Model name|^CPU\(s\)" | tr -s ' ' >&2
$PY scripts/decoder_memory.py --distill target/debug/distill --corpus bench-out/snippets.jsonl \
  --limit "$LIMIT" --rounds "$ROUNDS" --out bench-out/decoder-memory.json \
  assets/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
  assets/models/qwen2.5-coder/qwen2.5-coder-0.5b-instruct.gguf \
  assets/models/qwen2.5-coder/qwen2.5-coder-1.5b-instruct.gguf
# The CPU anchor: PyTorch + transformers f32 (the GGUF dequantized at load) against distill's bare
# forward (compact weights) of the 0.5B body on the same 256 snippets, same threads and token budget,
# in paired rounds; torch and transformers go into .work/torch-venv (PyPI's torch wheel is a CUDA
# build: about 4 GB with its NVIDIA libraries, unused here).
VENV=.work/torch-venv
if ! "$VENV/bin/python" -c "import torch, transformers, gguf, accelerate" 2>/dev/null; then
  $PY -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.15.0 transformers==4.57.6 \
    gguf==0.19.0 numpy==2.4.6 accelerate==1.10.1
fi
Q05=assets/models/qwen2.5-coder/qwen2.5-coder-0.5b-instruct.gguf
for round in 1 2 3; do
  target/debug/distill bench teacher --corpus bench-out/snippets.jsonl --teacher $Q05 --limit 256 \
    --unsorted-batch 0 --label-runs 0 --output embeddings --json > "bench-out/qwen-distill-$round.json"
  "$VENV/bin/python" scripts/hf_decoder_bench.py $Q05 bench-out/snippets.jsonl 256 \
    "bench-out/qwen-hf-$round.json" "$(nproc)"
done
$PY - <<'PY'
import json, statistics
rounds = []
for r in (1, 2, 3):
    d = json.load(open(f"bench-out/qwen-distill-{r}.json"))["sorted"]["real_tokens_per_second"]
    h = json.load(open(f"bench-out/qwen-hf-{r}.json"))["real_tokens_per_second"]
    rounds.append((d, h, d / h))
    print(f"round {r}: distill {d:.0f} real tok/s, transformers f32 {h:.0f}: {d / h:.2f}")
print(f"Qwen 0.5B body, distill (compact weights) / transformers f32 = {statistics.median(x[2] for x in rounds):.2f} (median of 3 rounds)")
json.dump({"rounds": [{"distill": d, "transformers": h, "ratio": q} for d, h, q in rounds],
           "ratio_median": statistics.median(x[2] for x in rounds)}, open("bench-out/qwen-vs-transformers.json", "w"))
PY
