#!/usr/bin/env bash
# The LM-student job: distill SmolLM2-135M (30 layers) into students with a quarter of its layers or
# fewer, from its cached per-token distributions, with the teacher switched off. On a corpus of real text
# (Rotten Tomatoes review snippets and Brown corpus sentences):
#   1. label the corpus once: `distill label --output token-topk --top-k 20 --samples 12` (the cache);
#   2. train three students on the same tokens and steps — CE on the next token only, top-k + tail KD,
#      sampled-token KD — never reading the held-out rows;
#   3. evaluate each, and the teacher, on the held-out rows from the cache: perplexity, KL to the
#      teacher, top-1 agreement, CPU tokens/s, size;
#   4. write .work/lm/report.{json,md}.
# Sizes (environment): LM_ROWS texts (default 2400, half each corpus), LM_HELD_OUT rows held out (200),
# LM_LAYERS student layers (6), LM_STEPS optimiser steps (200), LM_DEVICE (cpu; cuda:0 on a GPU, where
# larger sizes fit). About 25 minutes on 2 CPU cores at the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${LM_ROWS:-2400} HELD=${LM_HELD_OUT:-200} LAYERS=${LM_LAYERS:-6} STEPS=${LM_STEPS:-200}
DEVICE=${LM_DEVICE:-cpu}
./scripts/fetch-assets.sh
./scripts/install-blas.sh
cargo build --locked --bin distill
DISTILL=target/debug/distill
TEACHER=assets/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
W=.work/lm
mkdir -p "$W"
STORE=${LM_STORE:-$W/cache}
python3 - "$ROWS" "$HELD" "$W" <<'PY'
import json, random, sys
rows, held, w = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def take(path, n, keep):
    out = []
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        if keep(r) and len(r["text"].split()) >= 5:
            out.append(r)
        if len(out) == n:
            break
    return out
gold = {json.loads(l)["id"]: json.loads(l)["label"] for l in open("assets/corpora/rotten-tomatoes/gold.jsonl")}
rt = take("assets/corpora/rotten-tomatoes/corpus.jsonl", rows // 2, lambda r: gold.get(r["id"]) != "plot")
brown = take("assets/corpora/brown/corpus.jsonl", rows - len(rt), lambda r: True)
corpus = rt + brown
with open(f"{w}/corpus.jsonl", "w", encoding="utf-8") as f:
    for r in corpus:
        f.write(json.dumps({"id": r["id"], "text": r["text"]}) + "\n")
ids = [r["id"] for r in corpus]
random.Random(0).shuffle(ids)
with open(f"{w}/held-out.txt", "w") as f:
    f.write("".join(i + "\n" for i in sorted(ids[:held])))
print(f"corpus: {len(rt)} review snippets + {len(brown)} Brown sentences, {held} held out", file=sys.stderr)
PY
echo "== 1. label once with the teacher" >&2
$DISTILL label --corpus "$W/corpus.jsonl" --teacher "$TEACHER" --store "$STORE" --device "$DEVICE" \
  --output token-topk --top-k 20 --samples 12 --dtype f16 --shard-size 500 --json > "$W/label.json"
echo "== 2. three students, same tokens and steps, teacher off" >&2
for loss in ce topk sampled; do
  rm -rf "$W/student-$loss"
  $DISTILL train --cache "$STORE" --student lm --loss "$loss" --layers "$LAYERS" --max-steps "$STEPS" \
    --epochs 100 --max-seq 64 --batch 8 --exclude "$W/held-out.txt" --device "$DEVICE" \
    --out "$W/student-$loss"
done
echo "== 3. held-out evaluation from the cache" >&2
for m in "$TEACHER" "$W/student-ce" "$W/student-topk" "$W/student-sampled"; do
  $DISTILL eval --model "$m" --cache "$STORE" --held-out "$W/held-out.txt" --device "$DEVICE" --json
done > "$W/eval.jsonl"
python3 - "$W" <<'PY'
import json, sys
w = sys.argv[1]
label = json.load(open(f"{w}/label.json"))
rows = [json.loads(l) for l in open(f"{w}/eval.jsonl")] if False else []
text = open(f"{w}/eval.jsonl").read()
dec = json.JSONDecoder(); i = 0
while i < len(text):
    while i < len(text) and text[i].isspace(): i += 1
    if i >= len(text): break
    obj, i = dec.raw_decode(text, i); rows.append(obj)
names = ["teacher (SmolLM2-135M, 30 layers)", "student, CE only", "student, top-k + tail KD", "student, sampled KD"]
lines = ["| model | held-out perplexity | KL to teacher (nats) | top-1 agreement | tok/s b=1 | tok/s b=16 | parameters | size |",
         "|---|---|---|---|---|---|---|---|"]
for n, r in zip(names, rows):
    lines.append(f"| {n} | {r['perplexity']:.2f} | {r['kl_to_teacher']:.3f} | {100*r['top1_agreement']:.1f}% | "
                 f"{r['tokens_per_second_batch1']:.0f} | {r['tokens_per_second_batched']:.0f} | {r['parameters']:,} | {r['bytes']/1e6:.1f} MB |")
ce, topk, sampled = rows[1], rows[2], rows[3]
verdict = all(s["perplexity"] < ce["perplexity"] and s["kl_to_teacher"] < ce["kl_to_teacher"] for s in (topk, sampled))
head = (f"labeled {label['rows']} rows, {label['tokens']} tokens in {label['teacher_seconds']:.0f} teacher-seconds "
        f"({label['bytes_written'] / max(label['tokens'], 1):.1f} B/token); held-out rows: {rows[0]['rows']}, positions: {rows[0]['positions']}")
md = head + "\n\n" + "\n".join(lines) + f"\n\nboth KD students below CE-only in held-out perplexity and KL: {'yes' if verdict else 'NO'}\n"
open(f"{w}/report.md", "w").write(md)
json.dump({"label": label, "eval": dict(zip(names, rows)), "kd_beats_ce": verdict}, open(f"{w}/report.json", "w"), indent=2)
print(md)
PY
