#!/usr/bin/env bash
# The fuzz campaign: every reader target of tests/it/fuzz.rs for SECONDS seconds each (default 60),
# two at a time, printing the inputs tried per target. A panicking input is saved under
# target/fuzz-crashes/ and fails the run with its path; keep it as a regression test.
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
cargo build --locked --tests
DISTILL_FUZZ_SECONDS=$SECONDS_PER_TARGET cargo test --locked --test it fuzz_ -- --nocapture --test-threads 2 2>&1 |
  grep -E '^fuzz |panicked at tests/|^test result'
