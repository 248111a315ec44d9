#!/usr/bin/env bash
# The main job on a fresh machine: fetch the pinned teacher and data, build distill, then
# `distill quickstart`: label the Rotten Tomatoes corpus once with the real teacher into a local cache,
# fit the sentiment task from 100 gold labels, distill an n-gram and a transformer student, evaluate
# everything on a test set split by movie, fit a second task from the same cache with zero teacher
# seconds, and write .work/quickstart/report.{json,md}. Extra flags go to quickstart (e.g. --draws 5).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-assets.sh
./scripts/install-blas.sh
cargo build --locked --bin distill
DISTILL=target/debug/distill
STORE=${DISTILL_STORE:-.work/cache}
$DISTILL quickstart --store "$STORE" "$@"
$DISTILL cache ls --store "$STORE"
