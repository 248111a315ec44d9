#!/usr/bin/env bash
# The second task with long texts (issue 15's targets): SpamAssassin emails (ham vs spam, median 165
# words, cut to the teacher's 256 tokens), labeled once by MiniLM; per draw, 100 gold labels drawn at
# random from the emails outside a held-out 1,000, a head with C fixed at 1 against the head whose C and
# temperature are cross-validated, and an n-gram student distilled from the cross-validated one (never
# seeing the held-out texts), all evaluated on the held-out 1,000. Prints the means over the draws.
#
# usage: scripts/long-texts.sh [DRAWS]   (default 3; writes under .work/long-texts)
set -euo pipefail
cd "$(dirname "$0")/.."
DRAWS=${1:-3}
PY=${PYTHON:-python3}
./scripts/fetch-assets.sh
cargo build --locked --bin distill
DISTILL=target/debug/distill
OUT=.work/long-texts
STORE=${DISTILL_STORE:-.work/cache}
CORPUS=assets/corpora/spam-assassin/corpus.jsonl
mkdir -p "$OUT"
start=$(date +%s)
$DISTILL label --corpus "$CORPUS" --teacher assets/models/all-MiniLM-L6-v2 --store "$STORE" --json > "$OUT/label.json"
# The split and the draws (seeded): held-out ids, and per draw a gold file of 100 ids.
$PY - "$OUT" "$DRAWS" <<'PY'
import json, random, sys
out, draws = sys.argv[1], int(sys.argv[2])
gold = [json.loads(l) for l in open("assets/corpora/spam-assassin/gold.jsonl")]
rng = random.Random(0)
rng.shuffle(gold)
test, pool = gold[:1000], gold[1000:]
with open(f"{out}/test.jsonl", "w") as f:
    f.writelines(json.dumps({"id": g["id"], "label": g["label"]}) + "\n" for g in test)
with open(f"{out}/test-ids.txt", "w") as f:
    f.writelines(g["id"] + "\n" for g in test)
for d in range(draws):
    picked = random.Random(100 + d).sample(pool, 100)
    with open(f"{out}/gold-d{d}.jsonl", "w") as f:
        f.writelines(json.dumps({"id": g["id"], "label": g["label"]}) + "\n" for g in picked)
PY
TEACHER=$($PY -c "import json; print(json.load(open('$OUT/label.json'))['teacher_fingerprint'])")
for d in $(seq 0 $((DRAWS - 1))); do
  for head in c1 cv; do
    flags=(--c 1); [ "$head" = cv ] && flags=(--seed "$d")
    $DISTILL task fit --cache "$STORE" --corpus spam-assassin --teacher-fingerprint "$TEACHER" \
      --name "spam-$head-d$d" --labels "$OUT/gold-d$d.jsonl" "${flags[@]}" --json > "$OUT/task-$head-d$d.json"
    $DISTILL eval --model assets/models/all-MiniLM-L6-v2 --cache "$STORE" --task "spam-$head-d$d" \
      --labels "$OUT/test.jsonl" --latency-samples 20 --json > "$OUT/eval-teacher-$head-d$d.json"
  done
  $DISTILL train --cache "$STORE" --task "spam-cv-d$d" --student ngram --exclude "$OUT/test-ids.txt" \
    --seed "$d" --out "$OUT/ngram-d$d" > /dev/null
  $DISTILL eval --model "$OUT/ngram-d$d" --cache "$STORE" --task "spam-cv-d$d" \
    --labels "$OUT/test.jsonl" --json > "$OUT/eval-ngram-d$d.json"
done
$PY - "$OUT" "$DRAWS" "$(( $(date +%s) - start ))" <<'PY'
import json, statistics, sys
out, draws, wall = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def load(name):
    return [json.load(open(f"{out}/{name}-d{d}.json")) for d in range(draws)]
rows = [
    ("teacher + head, C = 1", load("eval-teacher-c1"), load("task-c1")),
    ("teacher + head (C, temperature by 5-fold CV)", load("eval-teacher-cv"), load("task-cv")),
    ("n-gram, distilled from the CV head (held-out texts unseen)", load("eval-ngram"), None),
]
print(f"SpamAssassin, ham vs spam: 100 gold labels per draw, 1,000 held-out emails, mean of {draws} draws ({wall} s)")
print(f"{'model':<58} {'accuracy':>9} {'min–max':>13} {'macro-F1':>9} {'CV acc':>7} {'C':>6}")
means = {}
for name, evals, tasks in rows:
    acc = [e["accuracy"] for e in evals]
    means[name] = statistics.mean(acc)
    cv = f"{100 * statistics.mean(t['cross_validation']['accuracy'] for t in tasks):.1f}%" if tasks else ""
    cs = "/".join(f"{t['cross_validation']['c']:g}" for t in tasks) if tasks else ""
    print(f"{name:<58} {100 * means[name]:>8.1f}% {100 * min(acc):>6.1f}–{100 * max(acc):<5.1f} "
          f"{statistics.mean(e['macro_f1'] for e in evals):>9.3f} {cv:>7} {cs:>6}")
names = [r[0] for r in rows]
print(f"{'MET ' if means[names[1]] >= means[names[0]] else 'MISS'} the cross-validated head ≥ the C = 1 head")
print(f"{'MET ' if means[names[2]] >= means[names[1]] - 0.01 else 'MISS'} the distilled student ≥ its teacher − 1 point")
PY
