#!/usr/bin/env bash
# OpenBLAS from Debian (pinned) for the CPU teachers' matrix products: distill loads it at run time
# (crate distill-blas) and falls back to candle's own matmul where it is missing. Needs root for apt;
# otherwise it only says what to install.
set -euo pipefail
PKG=libopenblas0-pthread VERSION=0.3.21+ds-4
if ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so\.0'; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing $PKG=$VERSION (apt)" >&2
  apt-get install -y -q --no-install-recommends "$PKG=$VERSION" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "$PKG=$VERSION" >/dev/null
  }
else
  echo "note: OpenBLAS is not installed (apt-get install $PKG); distill falls back to candle's matmul" >&2
fi
