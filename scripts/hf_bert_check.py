#!/usr/bin/env python3
"""An independent check that a directory is a standard Hugging Face BertForSequenceClassification
checkpoint: exactly the tensor names and shapes transformers expects for its config.json, and the
model's forward pass re-implemented in float64 numpy following transformers' BERT (embeddings,
post-LN encoder layers with exact GELU, tanh pooler on the first token, linear classifier).

Usage: hf_bert_check.py MODEL_DIR TEXT...  → prints {"labels": [...], "probabilities": [[...], ...]}.
Exits non-zero, naming the problem, if the checkpoint is not what transformers would load as is.
"""
import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer


def fail(msg):
    print(f"not a standard BertForSequenceClassification checkpoint: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    d, texts = sys.argv[1], sys.argv[2:]
    cfg = json.load(open(f"{d}/config.json"))
    if cfg.get("model_type") != "bert":
        fail(f"model_type is {cfg.get('model_type')!r}")
    if cfg.get("architectures") != ["BertForSequenceClassification"]:
        fail(f"architectures is {cfg.get('architectures')!r}")
    id2label = {int(k): v for k, v in cfg["id2label"].items()}
    labels = [id2label[i] for i in range(len(id2label))]
    if {k: int(v) for k, v in cfg["label2id"].items()} != {l: i for i, l in enumerate(labels)}:
        fail("label2id is not the inverse of id2label")
    h, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    heads, inter = cfg["num_attention_heads"], cfg["intermediate_size"]
    if cfg.get("hidden_act", "gelu") != "gelu":
        fail("this check implements hidden_act 'gelu' only")
    eps = cfg.get("layer_norm_eps", 1e-12)
    c = len(labels)
    expected = {
        "bert.embeddings.word_embeddings.weight": (cfg["vocab_size"], h),
        "bert.embeddings.position_embeddings.weight": (cfg["max_position_embeddings"], h),
        "bert.embeddings.token_type_embeddings.weight": (cfg.get("type_vocab_size", 2), h),
        "bert.embeddings.LayerNorm.weight": (h,),
        "bert.embeddings.LayerNorm.bias": (h,),
        "bert.pooler.dense.weight": (h, h),
        "bert.pooler.dense.bias": (h,),
        "classifier.weight": (c, h),
        "classifier.bias": (c,),
    }
    for i in range(L):
        p = f"bert.encoder.layer.{i}."
        for m in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]:
            expected[p + m + ".weight"] = (h, h)
            expected[p + m + ".bias"] = (h,)
        expected[p + "intermediate.dense.weight"] = (inter, h)
        expected[p + "intermediate.dense.bias"] = (inter,)
        expected[p + "output.dense.weight"] = (h, inter)
        expected[p + "output.dense.bias"] = (h,)
        for n in ["attention.output.LayerNorm", "output.LayerNorm"]:
            expected[p + n + ".weight"] = (h,)
            expected[p + n + ".bias"] = (h,)
    w = load_file(f"{d}/model.safetensors")
    missing = sorted(set(expected) - set(w))
    unexpected = sorted(set(w) - set(expected))
    if missing:
        fail(f"missing tensors {missing[:5]}")
    if unexpected:
        fail(f"unexpected tensors {unexpected[:5]}")
    for k, shape in expected.items():
        if tuple(w[k].shape) != shape:
            fail(f"{k} has shape {w[k].shape}, config.json implies {shape}")
    w = {k: v.astype(np.float64) for k, v in w.items()}

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def lin(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    erf = np.vectorize(math.erf)
    tok = Tokenizer.from_file(f"{d}/tokenizer.json")
    tok.no_padding()
    tok.enable_truncation(cfg["max_position_embeddings"])
    out = []
    for t in texts:
        ids = tok.encode(t).ids
        n = len(ids)
        x = w["bert.embeddings.word_embeddings.weight"][ids]
        x = x + w["bert.embeddings.position_embeddings.weight"][:n] + w["bert.embeddings.token_type_embeddings.weight"][0]
        x = ln(x, "bert.embeddings.LayerNorm")
        hd = h // heads
        for i in range(L):
            p = f"bert.encoder.layer.{i}."
            q, k, v = (lin(x, p + "attention.self." + m).reshape(n, heads, hd).transpose(1, 0, 2) for m in ["query", "key", "value"])
            s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(1, 0, 2).reshape(n, h)
            x = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            a = lin(x, p + "intermediate.dense")
            a = 0.5 * a * (1.0 + erf(a / math.sqrt(2.0)))
            x = ln(lin(a, p + "output.dense") + x, p + "output.LayerNorm")
        pooled = np.tanh(lin(x[0], "bert.pooler.dense"))
        z = lin(pooled, "classifier")
        e = np.exp(z - z.max())
        out.append((e / e.sum()).tolist())
    print(json.dumps({"labels": labels, "probabilities": out}))


if __name__ == "__main__":
    main()
