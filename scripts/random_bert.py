#!/usr/bin/env python3
"""Write a seeded random BERT checkpoint (model.safetensors) for a config.json, with HF tensor names.

    random_bert.py MODEL_DIR [SEED]

For device checks where the real weights cannot travel: a model of the real shape costs the same
compute, and CPU vs GPU agreement on it checks the GPU path (the CPU path is checked against the
independent reference). Needs numpy only.
"""
import json
import struct
import sys

import numpy as np

d = sys.argv[1]
rng = np.random.default_rng(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
c = json.load(open(f"{d}/config.json"))
h, i, v, p, t = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["max_position_embeddings"], c.get("type_vocab_size", 2)
tensors = {}


def put(name, *shape, scale=0.05, base=0.0):
    tensors[name] = (base + scale * rng.standard_normal(shape)).astype(np.float32)


put("embeddings.word_embeddings.weight", v, h, scale=0.5)
put("embeddings.position_embeddings.weight", p, h, scale=0.1)
put("embeddings.token_type_embeddings.weight", t, h, scale=0.1)
put("embeddings.LayerNorm.weight", h, base=1.0)
put("embeddings.LayerNorm.bias", h)
for layer in range(c["num_hidden_layers"]):
    pre = f"encoder.layer.{layer}."
    for n in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]:
        put(pre + n + ".weight", h, h)
        put(pre + n + ".bias", h, scale=0.02)
    put(pre + "intermediate.dense.weight", i, h)
    put(pre + "intermediate.dense.bias", i, scale=0.02)
    put(pre + "output.dense.weight", h, i)
    put(pre + "output.dense.bias", h, scale=0.02)
    for n in ["attention.output.LayerNorm", "output.LayerNorm"]:
        put(pre + n + ".weight", h, base=1.0)
        put(pre + n + ".bias", h)

header, offset, blobs = {}, 0, []
for name in sorted(tensors):
    a = tensors[name]
    header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
    blobs.append(a.tobytes())
hb = json.dumps(header).encode()
hb += b" " * (-len(hb) % 8)
with open(f"{d}/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(hb)))
    f.write(hb)
    for b in blobs:
        f.write(b)
