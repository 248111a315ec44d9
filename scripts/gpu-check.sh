#!/usr/bin/env bash
# Device check for a CUDA build of distill, run on a GPU machine from the repository root.
#
#   scripts/gpu-check.sh DISTILL_BINARY MODEL_DIR_WITHOUT_WEIGHTS SNIPPETS_JSONL OUT_DIR
#
# The model directory holds all-MiniLM-L6-v2's config, tokenizer and sentence-transformers files; the
# weights are drawn at random here (scripts/random_bert.py) so the check needs no 90 MB upload: the
# compute is the real model's, and CPU vs GPU agreement on the same weights checks the GPU path (the
# CPU path is checked against the independent float64 reference by tests/it/reference.rs).
set -euo pipefail
BIN=$1 MODEL=$2 SNIPPETS=$3 OUT=$4
mkdir -p "$OUT"
python3 scripts/random_bert.py "$MODEL" 0
# The CUDA libraries the binary links (cuBLAS, cuBLASLt, cuRAND, NVRTC): wherever this machine keeps them.
for lib in libcublas.so.13 libcudart.so.13 libcurand.so.10; do
  found=$(find /usr /opt /usr/local -name "$lib" 2>/dev/null | head -1)
  [ -n "$found" ] || { echo "error: $lib not found on this machine" >&2; exit 1; }
  LD_LIBRARY_PATH="$(dirname "$found"):${LD_LIBRARY_PATH:-}"
  export LD_LIBRARY_PATH
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

python3 - "$OUT/ref.jsonl" <<'PY'
import json, sys
ref = json.load(open("tests/data/minilm_l6_embeddings.json"))
with open(sys.argv[1], "w") as f:
    for i, s in enumerate(ref["sentences"]):
        f.write(json.dumps({"id": str(i), "text": s["text"]}) + "\n")
PY
for dev in cpu cuda:0; do
  "$BIN" label --corpus "$OUT/ref.jsonl" --teacher "$MODEL" --store "$OUT/store-${dev%%:*}" --device "$dev" --json > "$OUT/label-${dev%%:*}.json"
done
python3 - "$OUT" <<'PY'
import glob, json, sys
import numpy as np, pyarrow.parquet as pq
out = sys.argv[1]
def emb(store):
    (path,) = glob.glob(f"{out}/{store}/v1/*/*/shards/*.parquet")
    t = pq.read_table(path)
    return t.column("id").to_pylist(), np.array(t.column("embedding").to_pylist(), dtype=np.float64)
ic, c = emb("store-cpu"); ig, g = emb("store-cuda")
assert ic == ig, "same rows in the same order"
diff = float(np.abs(c - g).max())
print(json.dumps({"rows": len(ic), "max_abs_diff_cpu_vs_gpu": diff}))
json.dump({"rows": len(ic), "max_abs_diff_cpu_vs_gpu": diff}, open(f"{out}/numerics.json", "w"))
assert diff <= 1e-4, f"GPU differs from CPU by {diff}"
PY
for budget in 4096 16384 65536; do
  echo "== bench, --max-batch-tokens $budget" >&2
  "$BIN" bench teacher --corpus "$SNIPPETS" --teacher "$MODEL" --device cuda:0 --limit 2048 \
    --unsorted-batch 32 --max-batch-tokens "$budget" --json > "$OUT/bench-$budget.json"
  python3 -c "import json,sys; t=json.load(open(sys.argv[1])); s=t['sorted']; u=t['unsorted']; print(sys.argv[2], round(s['texts_per_second']), round(s['real_tokens_per_second']), round(s['padding_efficiency'],3), 'batch32:', round(u['texts_per_second']), 'e2e:', round(t['end_to_end_rows_per_second']))" "$OUT/bench-$budget.json" "$budget"
done
