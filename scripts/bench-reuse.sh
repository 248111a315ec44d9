#!/usr/bin/env bash
# Row reuse with the real teacher, the README's figures: all-MiniLM-L6-v2 labels the Rotten Tomatoes
# corpus (13,905 rows, shards of 1,000) into a fresh local store, then five new layouts of the same rows
# — one row prepended, shuffled, a half sample, split over three files without ids, every id renamed —
# each labeled against that store: the rows it copied, the teacher-seconds it spent and saved, wall time.
# Writes bench-out/reuse.json. Extra arguments go to every `distill label`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
./scripts/fetch-assets.sh
cargo build --locked --bin distill
mkdir -p bench-out
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CORPUS=assets/corpora/rotten-tomatoes/corpus.jsonl
$PY - "$CORPUS" "$WORK" <<'PY'
import json, random, sys, os
src, work = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(src, encoding="utf-8")]
def write(name, rs):
    with open(os.path.join(work, name), "w", encoding="utf-8") as f:
        for r in rs:
            f.write(json.dumps(r) + "\n")
rng = random.Random(7)
write("base.jsonl", rows)
write("prepended.jsonl", [{"id": "new-0", "text": "A film nobody has reviewed before."}] + rows)
shuffled = rows[:]
rng.shuffle(shuffled)
write("shuffled.jsonl", shuffled)
write("sampled.jsonl", rng.sample(rows, len(rows) // 2))
write("renamed.jsonl", [{"id": "r-" + r["id"], "text": r["text"]} for r in rows])
os.mkdir(os.path.join(work, "split"))
third = len(rows) // 3 + 1
for i in range(3):
    with open(os.path.join(work, "split", f"part-{i}.txt"), "w", encoding="utf-8") as f:
        for r in rows[i * third:(i + 1) * third]:
            f.write(r["text"].replace("\n", " ") + "\n")
PY
label() {
  local start end
  start=$(date +%s.%N)
  target/debug/distill label --corpus "$1" --teacher assets/models/all-MiniLM-L6-v2 --store "$WORK/store" \
    --json "${@:2}" > "$WORK/out.json"
  end=$(date +%s.%N)
  $PY -c 'import json, sys; s = json.load(open(sys.argv[1])); s["wall"] = float(sys.argv[3]) - float(sys.argv[2]); print(json.dumps(s))' \
    "$WORK/out.json" "$start" "$end"
}
{
  echo "["
  printf '{"case": "first pass", "summary": %s},\n' "$(label "$WORK/base.jsonl" "$@")"
  for c in prepended shuffled sampled renamed; do
    printf '{"case": "%s", "summary": %s},\n' "$c" "$(label "$WORK/$c.jsonl" "$@")"
  done
  printf '{"case": "split", "summary": %s}\n' "$(label "$WORK/split" "$@")"
  echo "]"
} > bench-out/reuse.json
$PY - <<'PY'
import json
runs = json.load(open("bench-out/reuse.json"))
print(f"{'layout':<12} {'rows':>7} {'hits':>5} {'copied':>7} {'teacher s':>9} {'saved s':>8} {'wall s':>7}")
for r in runs:
    s = r["summary"]
    print(f"{r['case']:<12} {s['rows']:>7,} {s['cache_hits']:>5} {s['rows_reused']:>7,} "
          f"{s['teacher_seconds']:>9.1f} {s['teacher_seconds_saved']:>8.1f} {s['wall']:>7.1f}")
PY
