#!/usr/bin/env bash
# The teacher benchmark behind the README's performance figures, measured side by side in one run:
# this machine's f32 GEMM peak (OpenBLAS through numpy, and candle's own matmul), the teacher's bare
# forward throughput (length-sorted token-budget batches, and fixed batches of 32 in corpus order), and
# end-to-end `distill label` throughput on the same 2,048 Rotten Tomatoes review snippets.
# Prints a table and writes bench-out/teacher.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install --quiet --disable-pip-version-check --root-user-action=ignore numpy==2.4.6
./scripts/fetch-assets.sh
cargo build --locked --bin distill
mkdir -p bench-out
# Review snippets (not plot summaries), in corpus order, as in shared anchor figures.
$PY - <<'PY'
import json
gold = {json.loads(l)["id"]: json.loads(l)["label"] for l in open("assets/corpora/rotten-tomatoes/gold.jsonl")}
rows = [json.loads(l) for l in open("assets/corpora/rotten-tomatoes/corpus.jsonl")]
rows = [r for r in rows if gold[r["id"]] != "plot" and r["text"].strip()][:2048]
with open("bench-out/snippets.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
PY
echo "== f32 GEMM peak, OpenBLAS via numpy (2048³, median of 5)" >&2
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE may be set on this kind of machine for old OpenBLAS builds; they
# slow a current numpy, so they are unset for this one measurement.
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $PY - <<'PY' | tee bench-out/gemm.json
import json, time, numpy as np
a = np.random.rand(2048, 2048).astype(np.float32); b = a.copy(); a @ b
t = []
for _ in range(5):
    s = time.perf_counter(); a @ b; t.append(time.perf_counter() - s)
t.sort()
print(json.dumps({"numpy_openblas_gflops": 2 * 2048**3 / t[2] / 1e9}))
PY
echo "== teacher (takes a few minutes)" >&2
target/debug/distill bench teacher --corpus bench-out/snippets.jsonl --teacher assets/models/all-MiniLM-L6-v2 \
  --limit 2048 --unsorted-batch 32 --json "$@" > bench-out/teacher.json
$PY - <<'PY'
import json
g = json.load(open("bench-out/gemm.json"))["numpy_openblas_gflops"]
t = json.load(open("bench-out/teacher.json"))
print(f"{t['rows']} snippets, {t['threads']} threads; f32 GEMM peak: OpenBLAS {g:.0f} GFLOP/s, candle {t['gemm_gflops']:.0f} GFLOP/s")
print(f"{'pass':<30}{'texts/s':>9}{'real tok/s':>12}{'padding':>9}{'GFLOP/s':>9}{'÷OpenBLAS':>11}{'÷candle':>9}")
for name, p in [("sorted, token budget", t["sorted"]), ("corpus order, batch 32", t["unsorted"])]:
    if p:
        print(f"{name:<30}{p['texts_per_second']:>9.1f}{p['real_tokens_per_second']:>12.0f}{p['padding_efficiency']:>9.3f}"
              f"{p['gflops']:>9.1f}{p['gflops'] / g:>10.0%}{p['gemm_ratio']:>9.0%}")
print(f"end to end distill label: {t['end_to_end_rows_per_second']:.1f} rows/s = {t['end_to_end_over_forward']:.2f} x bare forward"
      f" ({t['end_to_end_with_load_rows_per_second']:.1f} rows/s counting the teacher's load)")
PY
