#!/usr/bin/env bash
# Build the CUDA variant of distill on a machine without a GPU or a CUDA toolkit (how the GPU figures in
# the README were produced). Fetches NVIDIA's CUDA 13.0 toolkit pieces from PyPI (about 650 MB) into
# .cuda/ (git-ignored), links against a stub of the driver library (the real libcuda.so.1 is loaded on
# the GPU machine), and builds `target/debug/distill` with `--features cuda`.
#   CUDA_COMPUTE_CAP   GPU generation to compile kernels for (default 90: H100/H200)
#   CHECK_ONLY=1       only type-check the whole workspace with --features cuda, in .cuda/target (keeps
#                      the CPU build's target/ untouched; what a session without a GPU can verify)
# On a machine with a CUDA toolkit, plain `cargo build --features cuda` is enough.
set -euo pipefail
cd "$(dirname "$0")/.."
TK=$PWD/.cuda
mkdir -p "$TK/wheels"
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$TK/wheels" \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 \
  nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.5.25 nvidia-cublas==13.10.0.20
for w in "$TK"/wheels/*.whl; do unzip -q -o "$w" 'nvidia/*' -d "$TK"; done
CU=$TK/nvidia/cu13
chmod -R +x "$CU/bin" "$CU/nvvm/bin"
(cd "$CU/lib" && for l in cublas cublasLt cudart nvrtc; do ln -sf "lib$l.so.13" "lib$l.so"; done && ln -sf libcurand.so.10 libcurand.so)
# Link-time stub of the driver API: every cu* symbol cudarc declares, SONAME libcuda.so.1.
CUDARC=$(cargo metadata --format-version 1 --locked --features cuda | python3 -c \
  'import json,sys; print([p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"][0])')
grep -ho 'fn cu[A-Za-z0-9_]*(' "$(dirname "$CUDARC")/src/driver/sys/mod.rs" | sed 's/fn //; s/($//' | sort -u \
  | awk '{print "int " $1 "(void) { return 999; }"}' > "$TK/libcuda-stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CU/lib/libcuda.so" "$TK/libcuda-stub.c"
export CUDA_HOME=$CU CUDA_PATH=$CU PATH=$CU/bin:$PATH CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
if [ -n "${CHECK_ONLY:-}" ]; then
  CARGO_TARGET_DIR=$TK/target cargo check --locked --workspace --all-targets --features cuda
  echo "the workspace type-checks with CUDA (compute capability $CUDA_COMPUTE_CAP)" >&2
  exit 0
fi
cargo build --locked --features cuda --bin distill
echo "built target/debug/distill with CUDA (compute capability $CUDA_COMPUTE_CAP)" >&2
