#!/usr/bin/env bash
# Prompted decoder teachers side by side on Rotten Tomatoes sentiment (fresh vs rotten): each labels
# the same rows once from the quickstart's prompt, is calibrated on 100 gold labels (three draws) and
# scored on held-out snippets of other movies (split by movie, as the quickstart does); with teacher
# seconds, real tokens per second per core and the job's peak resident memory.
#
#   scripts/llm-teachers.sh [TEST_ROWS] [MODEL.gguf ...]
#
# Default: 500 test snippets; SmolLM2-135M, Qwen2.5-Coder-0.5B and -1.5B (fetch-assets.sh --large).
# Writes bench-out/llm-teachers.json and prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=${1:-500}
shift || true
MODELS=("$@")
if [ ${#MODELS[@]} -eq 0 ]; then
  MODELS=(assets/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    assets/models/qwen2.5-coder/qwen2.5-coder-0.5b-instruct.gguf
    assets/models/qwen2.5-coder/qwen2.5-coder-1.5b-instruct.gguf)
fi
cargo build --locked --bin distill
DISTILL=$PWD/target/debug/distill
OUT=bench-out/llm-teachers
rm -rf "$OUT"
mkdir -p "$OUT"
python3 - "$OUT" "$TEST" <<'PY'
import hashlib, json, random, sys
out, test_n = sys.argv[1], int(sys.argv[2])
gold = [json.loads(l) for l in open("assets/corpora/rotten-tomatoes/gold.jsonl")]
text = {json.loads(l)["id"]: json.loads(l)["text"] for l in open("assets/corpora/rotten-tomatoes/corpus.jsonl")}
reviews = [g for g in gold if g["label"] != "plot" and text[g["id"]].strip()]
held_out = lambda m: int(hashlib.sha256(m.encode()).hexdigest(), 16) % 5 == 0
rng = random.Random(7)
test = rng.sample([g for g in reviews if held_out(g["movie"])], test_n)
train = [g for g in reviews if not held_out(g["movie"])]
draws = [rng.sample(train, 100) for _ in range(3)]
ids = {g["id"] for g in test} | {g["id"] for d in draws for g in d}
with open(f"{out}/corpus.jsonl", "w") as f:
    for i in sorted(ids):
        f.write(json.dumps({"id": i, "text": text[i]}) + "\n")
with open(f"{out}/test.jsonl", "w") as f:
    for g in test:
        f.write(json.dumps({"id": g["id"], "label": g["label"]}) + "\n")
for d, rows in enumerate(draws):
    with open(f"{out}/gold-{d}.jsonl", "w") as f:
        for g in rows:
            f.write(json.dumps({"id": g["id"], "label": g["label"]}) + "\n")
print(f"{len(ids)} rows: {test_n} test snippets of held-out movies, 3 draws of 100 gold labels", file=sys.stderr)
PY
for model in "${MODELS[@]}"; do
  name=$(basename "$model" .gguf)
  store=$OUT/store-$name
  echo "== $name" >&2
  /usr/bin/time -f %M -o "$OUT/$name.rss" "$DISTILL" label --corpus "$OUT/corpus.jsonl" --teacher "$model" \
    --store "$store" --json \
    --prompt "Is this movie review positive or negative? Review: {text}" --chat \
    --answer-prefix "The review is" --choice "fresh= positive" --choice "rotten= negative" \
    > "$OUT/$name.label.json"
  for d in 0 1 2; do
    "$DISTILL" task fit --cache "$store" --name "sentiment-$d" --labels "$OUT/gold-$d.jsonl" --json \
      > "$OUT/$name.fit-$d.json"
  done
done
# Scored here from the cache (pyarrow) and each task's head (its JSON record), independently of distill's
# own evaluation code: prediction = argmax(W · class log-probs + b).
python3 - "$OUT" "${MODELS[@]}" <<'PY'
import glob, json, os, statistics, sys
import numpy as np
import pyarrow.dataset as ds
out, models = sys.argv[1], sys.argv[2:]
test = [json.loads(l) for l in open(f"{out}/test.jsonl")]
rows = []
cores = os.cpu_count()
for m in models:
    name = os.path.basename(m)[:-5]
    lab = json.load(open(f"{out}/{name}.label.json"))
    store = f"{out}/store-{name}"
    entry = f"{store}/v1/{lab['teacher_fingerprint']}/{lab['output_fingerprint']}/shards"
    t = ds.dataset(entry, format="parquet").to_table(columns=["id", "logits"]).to_pydict()
    logits = dict(zip(t["id"], (np.asarray(v, dtype=np.float64) for v in t["logits"])))
    x = np.stack([logits[g["id"]] for g in test])
    acc, raw = [], None
    for d in range(3):
        fit = json.load(open(f"{out}/{name}.fit-{d}.json"))
        labels, head = fit["labels"], fit["head"]
        w = np.asarray(head["weight"]).reshape(head["classes"], head["dim"])
        pred = (x @ w.T + np.asarray(head["bias"])).argmax(axis=1)
        acc.append(float(np.mean([labels[p] == g["label"] for p, g in zip(pred, test)])))
        raw = float(np.mean([labels[p] == g["label"] for p, g in zip(x.argmax(axis=1), test)]))
    r = {"model": name, "file_mb": os.path.getsize(m) / 2**20, "rows": lab["rows"], "tokens": lab["tokens"],
         "teacher_seconds": lab["teacher_seconds"], "tokens_per_s_per_core": lab["tokens"] / lab["teacher_seconds"] / cores,
         "peak_rss_mb": int(open(f"{out}/{name}.rss").read().split()[-1]) / 1024,
         "accuracy": acc, "accuracy_mean": statistics.mean(acc), "raw_accuracy": raw, "test_rows": len(test)}
    rows.append(r)
    print(f"{name:<36} held-out accuracy {100 * r['accuracy_mean']:.1f}% ({', '.join(f'{100 * a:.1f}' for a in acc)}; "
          f"raw {100 * raw:.1f}%), {r['rows']} rows in {r['teacher_seconds']:.0f} teacher-s, "
          f"{r['tokens_per_s_per_core']:.0f} tok/s/core, peak {r['peak_rss_mb']:.0f} MB (file {r['file_mb']:.0f} MB)")
json.dump(rows, open("bench-out/llm-teachers.json", "w"), indent=1)
PY
