#!/usr/bin/env bash
# The fuzz campaign: every reader target of tests/it/fuzz.rs for SECONDS seconds each (default 60),
# THREADS at a time (default 2), printing the inputs tried per target and the process's peak
# memory. A panicking input, or one that takes the process past MAX_RSS_MB of resident memory
# (default 1024), is saved under target/fuzz-crashes/ and fails the run with its path; keep it as a
# regression test.
# Usage: [THREADS=2] [MAX_RSS_MB=1024] scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
THREADS=${THREADS:-2}
cargo build --locked --tests
start=$(date +%s)
# The whole output goes to target/fuzz-campaign.log; the summary lines (which the test harness may
# print after a test's name on the same line) are picked out of it.
DISTILL_FUZZ_SECONDS=$SECONDS_PER_TARGET DISTILL_FUZZ_MAX_RSS_MB=${MAX_RSS_MB:-1024} \
  cargo test --locked --test it fuzz_ -- --nocapture --test-threads "$THREADS" 2>&1 |
  tee target/fuzz-campaign.log |
  grep -oE 'fuzz [^ ]+: [0-9]+ inputs tried.*|panicked at .*|.*over the ceiling.*|test result.*'
echo "campaign: $(( $(date +%s) - start )) s, $THREADS at a time, $SECONDS_PER_TARGET s per target" >&2
