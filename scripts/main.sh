#!/usr/bin/env bash
# The main job on a fresh machine: fetch the pinned teacher and data, build distill, label the Rotten
# Tomatoes corpus with the real teacher into a local cache, print the summary — then label it again to
# show that the second pass costs no teacher time.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-assets.sh
cargo build --locked --bin distill
DISTILL=target/debug/distill
STORE=${DISTILL_STORE:-.work/cache}
echo "== labeling assets/corpora/rotten-tomatoes/corpus.jsonl with all-MiniLM-L6-v2 into $STORE" >&2
$DISTILL label --corpus assets/corpora/rotten-tomatoes/corpus.jsonl \
  --teacher assets/models/all-MiniLM-L6-v2 --store "$STORE" "$@"
echo "== again: every shard is a cache hit" >&2
$DISTILL label --corpus assets/corpora/rotten-tomatoes/corpus.jsonl \
  --teacher assets/models/all-MiniLM-L6-v2 --store "$STORE" "$@"
$DISTILL cache ls --store "$STORE"
