#!/usr/bin/env bash
# Prepare, on a machine with PyPI access, what the decoder part of scripts/gpu-check.sh needs on a GPU
# machine that has no network (both folders are git-ignored: name them in the device run's `carry`):
#
#   .work/gpu-meta/    the metadata and tensor directory of the two real teachers (no weights), about
#                      1.4 MB each, from which scripts/random_llama.py builds random teachers of their
#                      shape (needs the real GGUFs here: scripts/fetch-assets.sh, 1.5B with --large)
#   .work/gpu-wheels/  gguf (to build them) and transformers with the pure-python packages it imports
#                      that PyTorch does not bring (torch brings filelock, fsspec, jinja2,
#                      typing-extensions; numpy and pyarrow are taken as installed, as the encoder part
#                      of gpu-check.sh already does), pinned; regex and pyyaml are compiled per Python
#                      version, so for CPython 3.10 to 3.14 (GPU_PYTHONS). About 24 MB in all.
#
#   [GPU_PYTHONS="3.12"] scripts/prepare-gpu-wheels.sh [QWEN_GGUF_DIR]   (default assets/models/qwen2.5-coder)
#
# GPU_PYTHONS: the CPython versions to fetch regex and pyyaml for (default "3.10 3.11 3.12 3.13 3.14",
# 1.6 MB each); name only the GPU machine's to save room in the carry.
#
# Not fetched: hf-xet (huggingface_hub's download accelerator; only imported for downloads), torch.
# gpu-check.sh installs the wheels with `pip install --no-index --no-deps --target .work/gpu-site` and
# puts that folder on PYTHONPATH, only for what the machine cannot import already.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-assets/models/qwen2.5-coder}
META=.work/gpu-meta WHEELS=.work/gpu-wheels
mkdir -p "$META" "$WHEELS"

for size in 0.5b 1.5b; do
  gguf_file="$SRC/qwen2.5-coder-$size-instruct.gguf"
  if [ -f "$gguf_file" ]; then
    python3 scripts/random_llama.py extract "$gguf_file" "$META/qwen2.5-coder-$size-instruct.json.gz"
  else
    echo "warning: $gguf_file not found; the $size shape is left out of the decoder check" >&2
  fi
done

# Pure-python wheels (and abi3 ones, for any CPython >= 3.9), exact pins.
python3 -m pip download --quiet --no-deps --disable-pip-version-check --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform any --python-version 3.10 --implementation cp -d "$WHEELS" \
  gguf==0.19.0 transformers==4.57.6 huggingface_hub==0.36.2 tokenizers==0.22.2 safetensors==0.7.0 \
  tqdm==4.67.1 packaging==25.0 requests==2.32.5 urllib3==2.5.0 idna==3.10 certifi==2025.8.3
# charset_normalizer (requests warns without it): its pure-python wheel, one file for every Python.
python3 -m pip download --quiet --no-deps --disable-pip-version-check --only-binary=:all: \
  --platform any --python-version 3.10 --implementation py --abi none -d "$WHEELS" charset_normalizer==3.4.3
# Compiled per CPython version.
for py in ${GPU_PYTHONS:-3.10 3.11 3.12 3.13 3.14}; do
  python3 -m pip download --quiet --no-deps --disable-pip-version-check --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --python-version "$py" \
    --implementation cp -d "$WHEELS" regex==2026.5.9 pyyaml==6.0.3
done
du -sh "$META" "$WHEELS"
ls "$WHEELS"
