#!/usr/bin/env python3
"""Seeded random decoder teachers of a real GGUF's shape, for device checks where the real weights cannot travel.

    random_llama.py extract SRC.gguf OUT.json.gz
    random_llama.py build META.json.gz OUT.gguf --seed N [--dtype f16|bf16|f32]
    random_llama.py hf MODEL.gguf HF_DIR [--dtype f16|bf16|f32]

`extract` keeps what a GGUF says about itself without its tensor data: every metadata key/value (the
architecture's hyper-parameters, the tokenizer's tokens, merges, token types and ids, the chat
template, ...) with its GGUF value type, and the tensor directory (names, GGUF shapes, ggml types).
Gzipped JSON: 1.4 MB for Qwen2.5-Coder's 151,936-token vocabulary (0.5B and 1.5B alike).

`build` writes a valid GGUF from that: the same metadata (general.file_type set to the new encoding,
general.name marked as random) and the same tensors, drawn at random from a generator seeded by
`--seed` and the tensor's name (so a tensor does not depend on the others or their order). Matrices in
`--dtype` (default f16), 1-D tensors (norms, biases) in f32, as llama.cpp's converter writes them.
Scales keep activations finite and the next-token distribution peaked as a trained model's is:
  - every block matrix (attn_q/k/v/output, ffn_gate/up/down): normal, std 0.02;
  - token_embd: std 0.02; output (the head): std 2.5/sqrt(hidden), so a logit has std ~2.5 and the
    top-1 log-probability sits near -3 instead of at log(1/vocab) (a std-0.02 head gives logits of
    std ~0.6 and a nearly flat distribution, whose top-1 flips under any rounding);
  - norm weights: 1 + 0.02 normal; biases: std 0.02.
The compute is the real model's, and any two implementations (CPU vs GPU, f32 vs bf16, distill vs
transformers) can be compared on it.

`hf` writes the same weights as an HF Qwen2ForCausalLM (or LlamaForCausalLM for a llama GGUF)
directory: config.json, model.safetensors (default: each tensor in its GGUF encoding, F16 or BF16
matrices and F32 norms and biases, so the weights are the GGUF's exactly; `--dtype` puts all in one), tokenizer.json built from the GGUF vocabulary and merges
(byte-level BPE; the qwen2 pre-tokenizer regex, or GPT-2's for other `tokenizer.ggml.pre`, then
ByteLevel; no normalizer, so it tokenizes exactly as the GGUF's tokenizer does: the real Qwen2
tokenizer.json applies NFC first, which changes nothing for NFC text), tokenizer_config.json with the
chat template, generation_config.json. Tensors: GGUF qwen2 Q/K rows are in HF's order (the converter
permutes only llama's Q/K, for its adjacent-pair rotary), so each HF tensor is the GGUF tensor as it
is; numpy's shape is the GGUF shape reversed ([out, in] for a matrix). Refuses a llama GGUF (its
Q/K would need un-permuting).

Needs numpy and gguf (`python3 -m pip install --no-deps gguf==0.19.0`; gguf imports pyyaml).
"""

import argparse
import gzip
import json
import math
import os
import struct
import sys
import time
import zlib

import numpy as np

from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize

QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                 r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# ggml file types (general.file_type) of an all-F32 / mostly-F16 / mostly-BF16 file.
FILE_TYPE = {"f32": 0, "f16": 1, "bf16": 32}
GGML_TYPE = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16,
             "bf16": GGMLQuantizationType.BF16}
# token_type values (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
CONTROL, USER_DEFINED = 3, 4


# ------------------------------------------------------------------------------------------ extract
def field_value(field):
    """A metadata field as (type name, sub-type name or None, JSON-able value)."""
    def scalar(part, vtype):
        if vtype == GGUFValueType.STRING:
            return bytes(part).decode("utf-8")
        v = part[0].item()
        return bool(v) if vtype == GGUFValueType.BOOL else v
    types = [GGUFValueType(t) for t in field.types]
    if types[0] == GGUFValueType.ARRAY:
        if len(types) != 2:
            raise SystemExit(f"{field.name}: nested arrays are not supported")
        return "ARRAY", types[1].name, [scalar(field.parts[i], types[1]) for i in field.data]
    return types[0].name, None, scalar(field.parts[field.data[0]], types[0])


def extract(src, out):
    r = GGUFReader(src)
    kv = []
    for key, field in r.fields.items():
        if key.startswith("GGUF."):  # header fields (version, counts), not key/values
            continue
        vtype, sub, value = field_value(field)
        e = {"key": key, "type": vtype, "value": value}
        if sub:
            e["sub_type"] = sub
        kv.append(e)
    tensors = [{"name": t.name, "shape": [int(d) for d in t.shape], "type": t.tensor_type.name}
               for t in r.tensors]
    meta = {"format": "random_llama.meta.v1", "source": os.path.basename(src),
            "source_bytes": os.path.getsize(src), "kv": kv, "tensors": tensors}
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as f:
        json.dump(meta, f, ensure_ascii=False, separators=(",", ":"))
    print(f"{out}: {len(kv)} keys, {len(tensors)} tensors, {os.path.getsize(out) / 2**20:.2f} MiB",
          file=sys.stderr)


def load_meta(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != "random_llama.meta.v1":
        raise SystemExit(f"{path}: not a random_llama.py extract file")
    return meta


def meta_value(meta, key, default=None):
    for e in meta["kv"]:
        if e["key"] == key:
            return e["value"]
    return default


# -------------------------------------------------------------------------------------------- build
def scale(name, hidden):
    """(std, base) of a tensor's random values, by its GGUF name."""
    if name == "output.weight":
        return 2.5 / math.sqrt(hidden), 0.0
    if name.endswith("_norm.weight") or name == "output_norm.weight":
        return 0.02, 1.0
    if name.endswith(".bias"):
        return 0.02, 0.0
    return 0.02, 0.0


def rng_for(seed, name):
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


def to_bf16_bits(a):
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even (finite inputs)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def random_tensor(name, np_shape, seed, hidden, dtype):
    """The tensor's values, encoded: (array to write, ggml type)."""
    std, base = scale(name, hidden)
    rng = rng_for(seed, name)
    a = rng.standard_normal(np_shape, dtype=np.float32)
    a *= np.float32(std)
    if base:
        a += np.float32(base)
    if len(np_shape) == 1 or dtype == "f32":
        return a, GGMLQuantizationType.F32
    if dtype == "f16":
        return a.astype(np.float16), GGMLQuantizationType.F16
    return to_bf16_bits(a), GGMLQuantizationType.BF16


def build(meta_path, out, seed, dtype):
    meta = load_meta(meta_path)
    arch = meta_value(meta, "general.architecture")
    hidden = meta_value(meta, f"{arch}.embedding_length")
    if arch is None or hidden is None:
        raise SystemExit(f"{meta_path}: no general.architecture / <arch>.embedding_length")
    t0 = time.perf_counter()
    tmp = out + ".tmp"
    w = GGUFWriter(tmp, arch)  # writes general.architecture itself
    for e in meta["kv"]:
        key, value = e["key"], e["value"]
        if key == "general.architecture":
            continue
        if key == "general.file_type":
            value = FILE_TYPE[dtype]
        elif key == "general.name":
            value = f"{value} (random weights, seed {seed})"
        elif key == "general.alignment":
            w.data_alignment = int(value)
        sub = GGUFValueType[e["sub_type"]] if "sub_type" in e else None
        w.add_key_value(key, value, GGUFValueType[e["type"]], sub)
    if meta_value(meta, "general.file_type") is None:
        w.add_key_value("general.file_type", FILE_TYPE[dtype], GGUFValueType.UINT32)
    # Tensor infos first (the header needs every shape and type), then the data one tensor at a time.
    plan = []
    for t in meta["tensors"]:
        np_shape = tuple(reversed(t["shape"]))
        ggml = GGMLQuantizationType.F32 if len(np_shape) == 1 else GGML_TYPE[dtype]
        item = {GGMLQuantizationType.F32: 4, GGMLQuantizationType.F16: 2,
                GGMLQuantizationType.BF16: 2}[ggml]
        np_dtype = {4: np.float32, 2: np.float16}[item] if ggml != GGMLQuantizationType.BF16 else np.uint16
        w.add_tensor_info(t["name"], np_shape, np.dtype(np_dtype), item * math.prod(np_shape),
                          raw_dtype=ggml)
        plan.append((t["name"], np_shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    n = 0
    for name, np_shape in plan:
        a, _ = random_tensor(name, np_shape, seed, hidden, dtype)
        w.write_tensor_data(a)
        n += a.size
    w.close()
    os.replace(tmp, out)
    print(f"{out}: {n / 1e6:.1f}M parameters, {dtype}, seed {seed}, "
          f"{os.path.getsize(out) / 2**20:.0f} MiB in {time.perf_counter() - t0:.1f}s", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- hf
HF_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_name(name):
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    parts = name.split(".", 2)
    if parts[0] == "blk" and parts[2] in HF_NAMES:
        return f"model.layers.{parts[1]}.{HF_NAMES[parts[2]]}"
    raise SystemExit(f"no HF name for GGUF tensor {name}")


def hf_tensor(t, dtype):
    """(safetensors dtype, little-endian bytes) of a GGUF tensor in numpy orientation."""
    shape = tuple(int(d) for d in reversed(list(t.shape)))
    src = t.tensor_type
    if dtype is None:  # keep the file's encoding where safetensors has it
        dtype = {GGMLQuantizationType.F16: "f16", GGMLQuantizationType.BF16: "bf16"}.get(src, "f32")
    if src == GGMLQuantizationType.F16 and dtype == "f16":
        return "F16", np.ascontiguousarray(t.data).reshape(shape).tobytes()
    if src == GGMLQuantizationType.BF16 and dtype == "bf16":
        return "BF16", np.ascontiguousarray(t.data).tobytes()
    a = np.asarray(dequantize(t.data, src), dtype=np.float32).reshape(shape)
    if dtype == "f32":
        return "F32", a.tobytes()
    if dtype == "f16":
        return "F16", a.astype(np.float16).tobytes()
    return "BF16", to_bf16_bits(a).tobytes()


def tokenizer_files(md):
    """tokenizer.json and tokenizer_config.json contents from GGUF metadata."""
    if md.get("tokenizer.ggml.model") != "gpt2":
        raise SystemExit("hf: only byte-level BPE (tokenizer.ggml.model gpt2) tokenizers")
    tokens = md["tokenizer.ggml.tokens"]
    types = md.get("tokenizer.ggml.token_type", [1] * len(tokens))
    vocab, added = {}, []
    for i, (tok, ty) in enumerate(zip(tokens, types)):
        if ty in (CONTROL, USER_DEFINED):
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": ty == CONTROL})
        elif ty == 5:  # unused padding rows of the embedding ([PAD151665] ...): not tokens
            continue
        else:
            vocab.setdefault(tok, i)
    pattern = QWEN2_PATTERN if md.get("tokenizer.ggml.pre") == "qwen2" else GPT2_PATTERN
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    add_bos = bool(md.get("tokenizer.ggml.add_bos_token", False))
    bos_id = md.get("tokenizer.ggml.bos_token_id")
    eos_id = md.get("tokenizer.ggml.eos_token_id")
    pad_id = md.get("tokenizer.ggml.padding_token_id")
    name = lambda i: tokens[i] if i is not None else None  # noqa: E731
    if add_bos:
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": name(bos_id), "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": name(bos_id), "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": name(bos_id), "type_id": 1}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {name(bos_id): {"id": name(bos_id), "ids": [bos_id],
                                                  "tokens": [name(bos_id)]}}}
    else:
        post = byte_level
    tok_json = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            byte_level]},
        "post_processor": post,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab,
                  "merges": md.get("tokenizer.ggml.merges", [])},
    }
    config = {
        "add_bos_token": add_bos, "add_prefix_space": False, "clean_up_tokenization_spaces": False,
        "errors": "replace", "split_special_tokens": False,
        "bos_token": name(bos_id) if add_bos else None,
        "eos_token": name(eos_id), "pad_token": name(pad_id if pad_id is not None else eos_id),
        "unk_token": None,
        "model_max_length": int(md.get(f"{md['general.architecture']}.context_length", 32768)),
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
    }
    if md.get("tokenizer.chat_template"):
        config["chat_template"] = md["tokenizer.chat_template"]
    return tok_json, config, {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}


def hf(src, out, dtype):
    t0 = time.perf_counter()
    r = GGUFReader(src)
    md = {k: field_value(f)[2] for k, f in r.fields.items() if not k.startswith("GGUF.")}
    arch = md["general.architecture"]
    if arch != "qwen2":
        raise SystemExit(f"hf: only qwen2 GGUFs (their Q/K rows are HF's); this one is {arch!r}")
    tensors = {t.name: t for t in r.tensors}
    a = lambda k, d=None: md.get(f"{arch}.{k}", d)  # noqa: E731
    hidden, heads = a("embedding_length"), a("attention.head_count")
    vocab = int(tensors["token_embd.weight"].shape[1])
    tied = "output.weight" not in tensors
    ids = tokenizer_files(md)[2]
    weights_dtype = dtype or {GGMLQuantizationType.F16: "f16", GGMLQuantizationType.BF16: "bf16"}.get(
        tensors["token_embd.weight"].tensor_type, "f32")
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": hidden, "intermediate_size": a("feed_forward_length"),
        "num_hidden_layers": a("block_count"), "num_attention_heads": heads,
        "num_key_value_heads": a("attention.head_count_kv", heads),
        "max_position_embeddings": a("context_length"), "max_window_layers": a("block_count"),
        "rms_norm_eps": a("attention.layer_norm_rms_epsilon"), "rope_theta": a("rope.freq_base", 10000.0),
        "rope_scaling": None, "hidden_act": "silu", "attention_dropout": 0.0,
        "initializer_range": 0.02, "sliding_window": None, "use_sliding_window": False,
        "tie_word_embeddings": tied, "vocab_size": vocab, "use_cache": True,
        "bos_token_id": ids["bos_token_id"], "eos_token_id": ids["eos_token_id"],
        "torch_dtype": {"f16": "float16", "bf16": "bfloat16", "f32": "float32"}[weights_dtype],
        # As Qwen2.5's own config.json: a version before 4.57.2 with a non-Mistral model type tells
        # transformers 4.57.x not to warn about Mistral's tokenizer regex.
        "transformers_version": "4.43.1",
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tok_json, tok_config, _ = tokenizer_files(md)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok_json, f, ensure_ascii=False)
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tok_config, f, ensure_ascii=False, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": ids["bos_token_id"], "eos_token_id": ids["eos_token_id"],
                   "do_sample": False}, f, indent=2)
    # safetensors, streamed: header (names sorted, offsets), then each tensor's bytes.
    names = sorted((hf_name(n), n) for n in tensors)
    itemsize = {"F16": 2, "BF16": 2, "F32": 4}
    st = {"f16": "F16", "bf16": "BF16", "f32": "F32"}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for hname, gname in names:
        t = tensors[gname]
        shape = [int(d) for d in reversed(list(t.shape))]
        # By default each tensor keeps its GGUF encoding (F16/BF16 matrices, F32 norms and biases), so
        # the HF weights are the GGUF's exactly; --dtype puts every tensor in one dtype.
        sdt = st[dtype] if dtype else {GGMLQuantizationType.F16: "F16", GGMLQuantizationType.BF16: "BF16"}.get(
            t.tensor_type, "F32")
        nbytes = itemsize[sdt] * math.prod(shape)
        header[hname] = {"dtype": sdt, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    path = os.path.join(out, "model.safetensors")
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for hname, gname in names:
            sdt, data = hf_tensor(tensors[gname], {"F16": "f16", "BF16": "bf16", "F32": "f32"}[
                header[hname]["dtype"]])
            assert len(data) == header[hname]["data_offsets"][1] - header[hname]["data_offsets"][0]
            f.write(data)
    os.replace(path + ".tmp", path)
    print(f"{out}: Qwen2ForCausalLM, {len(names)} tensors ({weights_dtype}), tied={tied}, "
          f"{len(tok_json['model']['vocab'])} + {len(tok_json['added_tokens'])} tokens, "
          f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract", help="GGUF metadata + tensor directory -> .json.gz")
    e.add_argument("src")
    e.add_argument("out")
    b = sub.add_parser("build", help=".json.gz -> GGUF with seeded random weights")
    b.add_argument("meta")
    b.add_argument("out")
    b.add_argument("--seed", type=int, required=True)
    b.add_argument("--dtype", choices=("f16", "bf16", "f32"), default="f16")
    h = sub.add_parser("hf", help="GGUF (qwen2) -> HF Qwen2ForCausalLM directory")
    h.add_argument("gguf")
    h.add_argument("out")
    h.add_argument("--dtype", choices=("f16", "bf16", "f32"), default=None,
                   help="safetensors dtype (default: the GGUF matrices' own: f16, bf16, else f32)")
    args = ap.parse_args(argv)
    if args.cmd == "extract":
        extract(args.src, args.out)
    elif args.cmd == "build":
        build(args.meta, args.out, args.seed, args.dtype)
    else:
        hf(args.gguf, args.out, args.dtype)


if __name__ == "__main__":
    main()
