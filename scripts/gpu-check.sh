#!/usr/bin/env bash
# Device check for a CUDA build of distill, run on a GPU machine from the repository root.
#
#   scripts/gpu-check.sh DISTILL_BINARY MODEL_DIR_WITHOUT_WEIGHTS SNIPPETS_JSONL OUT_DIR
#
# The model directory holds all-MiniLM-L6-v2's config, tokenizer and sentence-transformers files; the
# weights are drawn at random here (scripts/random_bert.py) so the check needs no 90 MB upload: the
# compute is the real model's, and CPU vs GPU agreement on the same weights checks the GPU path (the
# CPU path is checked against the independent float64 reference by tests/it/reference.rs).
#
# Decoder part, after the encoder part, when .work/gpu-meta/ exists (scripts/gpu_decoder_check.py; its
# docstring says what it measures): random teachers of the real Qwen2.5-Coder 0.5B and 1.5B shapes
# (scripts/random_llama.py, built here from their metadata: the real GGUFs cannot travel), labeled by
# distill on the GPU in bf16 and on the CPU in f32 (prompt scoring and token-topk), and run through
# PyTorch + transformers in bf16 (sdpa); prints a table (also OUT_DIR/decoder.md) and writes
# OUT_DIR/decoder/decoder.json. Estimated 4-5 minutes on an H100 with the defaults, mostly building the
# random teachers (3.4 GB for 1.5B) and the CPU runs (not yet timed there). Settings (environment):
#   DECODER_N             snippets labeled on the GPU, per model and output (default 512)
#   DECODER_N_CPU         snippets labeled on the CPU in f32, the numerics' reference (default 64)
#   DECODER_MODELS        comma-separated names of .work/gpu-meta/<name>.json.gz (default: all there)
#   DECODER_TRANSFORMERS  require (default), auto (skip when torch/transformers cannot be imported) or skip
#   DECODER_PEAK_TFLOPS   the GPU's dense bf16 peak (default 989: H100 SXM and H200; H100 PCIe: 756)
#   DECODER_BATCH_TOKENS  token budget of a GPU batch, distill's and transformers' (default 16384)
#   DECODER_DEVICE        the device under test (default cuda:0; cpu runs the flow without a GPU)
# It needs, prepared on a machine with PyPI access by scripts/prepare-gpu-wheels.sh and carried with the
# working tree (both git-ignored: name them in the device run's `carry`, whose 64 MiB also hold the
# CUDA binary: carry it stripped and compressed), about 27 MB:
#   .work/gpu-meta/    qwen2.5-coder-{0.5b,1.5b}-instruct.json.gz (metadata, no weights)
#   .work/gpu-wheels/  gguf, transformers 4.57.6 and the pure-python packages it imports that PyTorch
#                      does not bring; installed with pip --no-index into .work/gpu-site (on PYTHONPATH
#                      for this script only) where the machine cannot import them already. What
#                      scripts/prepare-gpu-wheels.sh downloads (run from the repository root):
#     python3 -m pip download --no-deps --only-binary=:all: --platform manylinux2014_x86_64 --platform any \
#       --python-version 3.10 --implementation cp -d .work/gpu-wheels gguf==0.19.0 transformers==4.57.6 \
#       huggingface_hub==0.36.2 tokenizers==0.22.2 safetensors==0.7.0 tqdm==4.67.1 packaging==25.0 \
#       requests==2.32.5 urllib3==2.5.0 idna==3.10 certifi==2025.8.3
#     python3 -m pip download --no-deps --only-binary=:all: --platform any --python-version 3.10 \
#       --implementation py --abi none -d .work/gpu-wheels charset_normalizer==3.4.3
#     for py in 3.10 3.11 3.12 3.13 3.14; do python3 -m pip download --no-deps --only-binary=:all: \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --python-version $py \
#       --implementation cp -d .work/gpu-wheels regex==2026.5.9 pyyaml==6.0.3; done
#     python3 scripts/random_llama.py extract assets/models/qwen2.5-coder/qwen2.5-coder-0.5b-instruct.gguf \
#       .work/gpu-meta/qwen2.5-coder-0.5b-instruct.json.gz     (and the same for 1.5b)
# numpy and pyarrow are taken as installed (the encoder part reads the cache with them too).
set -euo pipefail
BIN=$1 MODEL=$2 SNIPPETS=$3 OUT=$4
mkdir -p "$OUT"
# The library path the machine had, before the CUDA libraries below: PyTorch loads its own.
DISTILL_HF_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
export DISTILL_HF_LD_LIBRARY_PATH
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

# ---------------------------------------------------------------------------------------- decoder part
if [ -d .work/gpu-meta ]; then
  echo "== decoder part" >&2
  # Install from the carried wheels only what this machine cannot import (pip picks each package's
  # wheel for this Python from the folder); transformers comes with its own hub, tokenizers and
  # safetensors, so their versions match it.
  need=()
  python3 -c 'import gguf' 2>/dev/null || need+=(gguf)
  python3 -c 'import transformers, tokenizers, safetensors, huggingface_hub' 2>/dev/null \
    || need+=(transformers tokenizers safetensors huggingface_hub)
  for pair in yaml:pyyaml regex:regex tqdm:tqdm packaging:packaging requests:requests urllib3:urllib3 \
      idna:idna certifi:certifi charset_normalizer:charset_normalizer; do
    python3 -c "import ${pair%%:*}" 2>/dev/null || need+=("${pair#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    [ -d .work/gpu-wheels ] || { echo "error: missing ${need[*]} and no .work/gpu-wheels (scripts/prepare-gpu-wheels.sh)" >&2; exit 1; }
    echo "installing from .work/gpu-wheels into .work/gpu-site: ${need[*]}" >&2
    python3 -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
      --find-links .work/gpu-wheels --target .work/gpu-site --upgrade "${need[@]}"
    PYTHONPATH="$PWD/.work/gpu-site${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONPATH
  fi
  LD_LIBRARY_PATH=$DISTILL_HF_LD_LIBRARY_PATH python3 -c \
    'import torch, transformers, gguf; print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())' \
    || echo "torch/transformers cannot be imported here (DECODER_TRANSFORMERS=${DECODER_TRANSFORMERS:-require})" >&2
  python3 scripts/gpu_decoder_check.py --distill "$BIN" --snippets "$SNIPPETS" --out "$OUT/decoder" \
    --meta-dir .work/gpu-meta --work .work/gpu-decoder --device "${DECODER_DEVICE:-cuda:0}" --precision bf16 \
    --n "${DECODER_N:-512}" --n-cpu "${DECODER_N_CPU:-64}" --batch-tokens "${DECODER_BATCH_TOKENS:-16384}" \
    --peak-tflops "${DECODER_PEAK_TFLOPS:-989}" --transformers "${DECODER_TRANSFORMERS:-require}" \
    ${DECODER_MODELS:+--models "$DECODER_MODELS"} | tee "$OUT/decoder.md"
else
  echo "== decoder part skipped: no .work/gpu-meta (scripts/prepare-gpu-wheels.sh, then carry .work/gpu-meta and .work/gpu-wheels)" >&2
fi
