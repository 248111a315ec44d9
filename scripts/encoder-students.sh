#!/usr/bin/env bash
# BERT-size students of an LLM's task (issue 30's chain, outside the quickstart): a prompted decoder
# labels TRAIN review snippets and TEST held-out ones (other movies, split by movie), is calibrated on
# 100 gold labels, and students are distilled from its calibrated labels on the training rows only
# (the test ids excluded): the n-gram student and all-MiniLM-L6-v2 initialised encoders with 6 and 3
# layers, plus the gold-only MiniLM baseline. Everything is scored on the test snippets, which no
# student trained on, by `distill eval`; the teacher's own accuracy there is computed from the cache.
#
#   [RECIPES=1] scripts/encoder-students.sh [TEACHER.gguf] [TRAIN_ROWS (2000)] [TEST_ROWS (500)] [DRAWS (3)]
#
# The students train with the defaults of `distill train` (2 epochs; early stopping on a 10% held-out
# slice of the training rows' soft labels). RECIPES=1 adds 4-epoch runs of both encoders and a
# 3-layer run with layer-wise learning-rate decay 0.8.
# Writes bench-out/$NAME.json (NAME: encoder-students) and prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
TEACHER=${1:-assets/models/qwen2.5-coder/qwen2.5-coder-0.5b-instruct.gguf}
TRAIN=${2:-2000} TEST=${3:-500} DRAWS=${4:-3}
MINILM=assets/models/all-MiniLM-L6-v2
cargo build --locked --bin distill
DISTILL=$PWD/target/debug/distill
NAME=${NAME:-encoder-students} # output folder and summary name under bench-out/
OUT=bench-out/$NAME
rm -rf "$OUT"
mkdir -p "$OUT"
python3 - "$OUT" "$TRAIN" "$TEST" "$DRAWS" <<'PY'
import hashlib, json, random, sys
out, train_n, test_n, draws = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
gold = [json.loads(l) for l in open("assets/corpora/rotten-tomatoes/gold.jsonl")]
text = {json.loads(l)["id"]: json.loads(l)["text"] for l in open("assets/corpora/rotten-tomatoes/corpus.jsonl")}
reviews = [g for g in gold if g["label"] != "plot" and text[g["id"]].strip()]
held_out = lambda m: int(hashlib.sha256(m.encode()).hexdigest(), 16) % 5 == 0
rng = random.Random(11)
test = rng.sample([g for g in reviews if held_out(g["movie"])], test_n)
train = rng.sample([g for g in reviews if not held_out(g["movie"])], train_n)
with open(f"{out}/corpus.jsonl", "w") as f:
    for g in train + test:
        f.write(json.dumps({"id": g["id"], "text": text[g["id"]]}) + "\n")
for name, rows in [("test", test)] + [(f"gold-{d}", rng.sample(train, 100)) for d in range(draws)]:
    with open(f"{out}/{name}.jsonl", "w") as f:
        for g in rows:
            f.write(json.dumps({"id": g["id"], "label": g["label"]}) + "\n")
print(f"{train_n} training + {test_n} held-out snippets; {draws} draws of 100 gold labels", file=sys.stderr)
PY
STORE=$OUT/store
echo "== labeling with $(basename "$TEACHER")" >&2
"$DISTILL" label --corpus "$OUT/corpus.jsonl" --teacher "$TEACHER" --store "$STORE" --json \
  --prompt "Is this movie review positive or negative? Review: {text}" --chat \
  --answer-prefix "The review is" --choice "fresh= positive" --choice "rotten= negative" > "$OUT/label.json"
for d in $(seq 0 $((DRAWS - 1))); do
  echo "== draw $d" >&2
  "$DISTILL" task fit --cache "$STORE" --name "s$d" --labels "$OUT/gold-$d.jsonl" --json > "$OUT/fit-$d.json"
  train() { # name extra-args...
    local name=$1
    shift
    /usr/bin/time -f %e -o "$OUT/$name-$d.secs" "$DISTILL" train --cache "$STORE" --task "s$d" \
      --exclude "$OUT/test.jsonl" --out "$OUT/$name-$d" "$@" 2> "$OUT/$name-$d.log"
    "$DISTILL" eval --model "$OUT/$name-$d" --cache "$STORE" --task "s$d" --labels "$OUT/test.jsonl" \
      --latency-samples 100 --json > "$OUT/$name-$d.eval.json"
  }
  train ngram --student ngram
  train minilm6 --student transformer --init "$MINILM" --layers 6
  train minilm3 --student transformer --init "$MINILM" --layers 3
  train gold-minilm6 --student transformer --init "$MINILM" --layers 6 --gold-only
  if [ -n "${RECIPES:-}" ]; then # the training recipes of issue 30: more epochs, layer-wise rates
    train minilm6-e4 --student transformer --init "$MINILM" --layers 6 --epochs 4
    train minilm3-e4 --student transformer --init "$MINILM" --layers 3 --epochs 4
    train minilm3-e4-llrd --student transformer --init "$MINILM" --layers 3 --epochs 4 --layer-lr-decay 0.8
  fi
done
python3 - "$OUT" "$DRAWS" "$NAME" <<'PY'
import json, os, statistics, sys
import numpy as np
import pyarrow.dataset as ds
out, draws, summary_name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
test = [json.loads(l) for l in open(f"{out}/test.jsonl")]
lab = json.load(open(f"{out}/label.json"))
entry = f"{out}/store/v1/{lab['teacher_fingerprint']}/{lab['output_fingerprint']}/shards"
t = ds.dataset(entry, format="parquet").to_table(columns=["id", "logits"]).to_pydict()
logits = dict(zip(t["id"], (np.asarray(v, dtype=np.float64) for v in t["logits"])))
x = np.stack([logits[g["id"]] for g in test])
rows = {"teacher (prompted, calibrated)": []}
for d in range(draws):
    fit = json.load(open(f"{out}/fit-{d}.json"))
    h = fit["head"]
    w = np.asarray(h["weight"]).reshape(h["classes"], h["dim"])
    pred = (x @ w.T + np.asarray(h["bias"])).argmax(axis=1)
    rows["teacher (prompted, calibrated)"].append({"accuracy": float(np.mean([fit["labels"][p] == g["label"] for p, g in zip(pred, test)]))})
    for name in ["ngram", "minilm6", "minilm3", "gold-minilm6", "minilm6-e4", "minilm3-e4", "minilm3-e4-llrd"]:
        if not os.path.exists(f"{out}/{name}-{d}.eval.json"):
            continue
        e = json.load(open(f"{out}/{name}-{d}.eval.json"))
        e["train_seconds"] = float(open(f"{out}/{name}-{d}.secs").read().split()[-1])
        rows.setdefault(name, []).append(e)
def get(e, *keys):
    for k in keys:
        if isinstance(e, dict) and k in e:
            return e[k]
    return None
summary = []
for name, es in rows.items():
    acc = [get(e, "accuracy") for e in es]
    r = {"model": name, "accuracy": acc, "mean": statistics.mean(acc), "min": min(acc), "max": max(acc)}
    for k in ("latency_p50_ms", "throughput", "parameters", "bytes", "macro_f1", "agreement", "ece", "train_seconds"):
        v = [get(e, k) for e in es if get(e, k) is not None]
        if v:
            r[k] = statistics.mean(v)
    summary.append(r)
    extra = ", ".join(f"{k} {r[k]:.4g}" for k in ("macro_f1", "agreement", "throughput", "latency_p50_ms", "parameters", "train_seconds") if k in r)
    print(f"{name:<32} held-out accuracy {100 * r['mean']:.1f}% ({100 * r['min']:.1f}–{100 * r['max']:.1f}) {extra}")
json.dump({"teacher": lab["teacher"], "teacher_seconds": lab["teacher_seconds"], "rows": summary},
          open(f"bench-out/{summary_name}.json", "w"), indent=1)
PY
