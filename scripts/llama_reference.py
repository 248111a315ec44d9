#!/usr/bin/env python3
"""Independent float64 numpy reference for llama-architecture GGUF decoder LMs.

Used by the Rust tests to check the project's own tokenizer and forward pass.
It imports nothing from the project. Dependencies (versions used when it was
written): numpy (2.4.6), gguf==0.19.0 (GGUF reader + `gguf.quants.dequantize`),
regex (2026.5.9, for \\p{L}/\\p{N} classes). Install with
    python3 -m pip install gguf==0.19.0 regex numpy

Method
------
Tokenizer (`tokenizer.ggml.model == "gpt2"`, byte-level BPE):
  1. pre-tokenize: every numeric character (\\p{N}, as HF `Digits(individual_digits
     =True)`, i.e. Rust `char::is_numeric`) becomes its own piece; each piece is
     then split with the GPT-2 regex (GPT2_PATTERN below). No prefix space.
  2. each word's UTF-8 bytes are mapped through the GPT-2 byte->unicode table.
  3. BPE: repeatedly merge the adjacent pair with the lowest merge rank
     (rank = index in `tokenizer.ggml.merges`, leftmost on ties); per-word cache.
  4. pieces -> ids via `tokenizer.ggml.tokens`. Control-token text such as
     "<|im_start|>" inside the input is ordinary text (never a control token).
  5. if `tokenizer.ggml.add_bos_token` is true (default false), prepend bos id.
Forward (all float64; weights dequantized once, oriented [out, in], y = x @ W.T):
  embedding lookup; per block: RMSNorm -> q/k/v (+ optional biases) -> rotary
  embedding -> causal softmax attention with GQA (kv head j serves query heads
  j*group .. j*group+group-1), scale 1/sqrt(head_dim) -> attn_output -> residual;
  RMSNorm -> SwiGLU down(silu(gate(x)) * up(x)) -> residual. Final output_norm,
  logits = h @ output.weight.T (token_embd.weight when output.weight is absent).
  Rotary: llama.cpp's converter permutes llama q/k weights so GGUF uses the
  "adjacent pairs" (NORM) rope: (x[2i], x[2i+1]) rotated by pos * base^(-2i/d),
  d = rope.dimension_count (dims beyond d are left untouched). `--rope-style
  neox` (rotate (x[i], x[i+d/2])) exists only to demonstrate the wrong choice.

Output (see README of the CLI below): per row, per position t, the log-softmax
of the logits at t (distribution over the token after token t): top-k ids
(descending log-prob, ties by lower id), their log-probs, `tail_logprob` =
log(1 - sum(exp(topk))) computed exactly as the logsumexp of all the non-top-k
log-probs (null, i.e. -inf, when the top-k hold the whole vocabulary),
`log_partition` = logsumexp of the raw logits, and `embedding` = L2-normalised
mean over positions of the final hidden states after output_norm. Non-finite
values are written as JSON null (strict JSON).

CLI:
  python3 scripts/llama_reference.py --gguf PATH --texts TEXTS.json --top-k K \\
      --out OUT.json [--max-tokens N] [--dump-logprobs]
"""

import argparse
import json
import importlib.metadata
import math
import os
import sys
import time

import numpy as np
import regex

import gguf
from gguf import GGUFValueType
from gguf.quants import dequantize

GPT2_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
                r"""|\s+(?!\S)|\s+""")
DIGIT_PATTERN = r"\p{N}"


# --------------------------------------------------------------------------- GGUF
def field_value(field):
    """Decode a GGUF metadata field from its raw parts (works across gguf versions)."""
    def scalar(part, vtype):
        if vtype == GGUFValueType.STRING:
            return bytes(part).decode("utf-8")
        v = part[0].item()
        return bool(v) if vtype == GGUFValueType.BOOL else v
    types = field.types
    if types[0] == GGUFValueType.ARRAY:
        return [scalar(field.parts[i], types[-1]) for i in field.data]
    return scalar(field.parts[field.data[0]], types[0])


class GGUFModel:
    def __init__(self, path):
        self.reader = gguf.GGUFReader(path)
        self.meta = {k: field_value(f) for k, f in self.reader.fields.items()
                     if not k.startswith("GGUF.")}
        self.tensors = {t.name: t for t in self.reader.tensors}

    def get(self, key, default=None):
        return self.meta.get(key, default)

    def tensor(self, name):
        """Dequantize one tensor to float64 in numpy (PyTorch) orientation.

        GGUF stores dims fastest-first (ne0 = input features); the reader's
        `t.shape` is that order, so the numpy array is reversed(t.shape),
        i.e. [out, in] for matrices."""
        t = self.tensors[name]
        arr = dequantize(t.data, t.tensor_type)
        shape = tuple(int(d) for d in reversed(list(t.shape)))
        return np.asarray(arr, dtype=np.float64).reshape(shape)

    def maybe(self, name):
        return self.tensor(name) if name in self.tensors else None


# ---------------------------------------------------------------------- tokenizer
def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode char table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
          + list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


class Gpt2Tokenizer:
    def __init__(self, model):
        kind = model.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(f"only tokenizer.ggml.model=gpt2 is supported, got {kind!r}")
        self.tokens = model.get("tokenizer.ggml.tokens")
        self.token_to_id = {}
        for i, tok in enumerate(self.tokens):
            self.token_to_id.setdefault(tok, i)
        self.ranks = {}
        for i, m in enumerate(model.get("tokenizer.ggml.merges", [])):
            a, b = m.split(" ", 1)
            self.ranks.setdefault((a, b), i)
        self.add_bos = bool(model.get("tokenizer.ggml.add_bos_token", False))
        self.bos_id = model.get("tokenizer.ggml.bos_token_id")
        self.unk_id = model.get("tokenizer.ggml.unknown_token_id")
        self.byte_enc = bytes_to_unicode()
        self.byte_dec = {c: b for b, c in self.byte_enc.items()}
        self.digit_re = regex.compile(DIGIT_PATTERN)
        self.word_re = regex.compile(GPT2_PATTERN)
        self.cache = {}

    def pre_tokenize(self, text):
        pieces, last = [], 0
        for m in self.digit_re.finditer(text):  # isolate each numeric char
            if m.start() > last:
                pieces.append(text[last:m.start()])
            pieces.append(m.group())
            last = m.end()
        if last < len(text):
            pieces.append(text[last:])
        return [w for p in pieces for w in self.word_re.findall(p)]

    def bpe(self, word):
        symbols = list(word)
        while len(symbols) > 1:
            best, best_rank = None, None
            for i in range(len(symbols) - 1):
                r = self.ranks.get((symbols[i], symbols[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None:
                break
            symbols[best:best + 2] = [symbols[best] + symbols[best + 1]]
        return symbols

    def symbol_ids(self, sym):
        if sym in self.token_to_id:
            return [self.token_to_id[sym]]
        out = []  # unknown multi-char piece: fall back to its single chars
        for ch in sym:
            if ch in self.token_to_id:
                out.append(self.token_to_id[ch])
            elif self.unk_id is not None:
                out.append(int(self.unk_id))
            else:
                raise ValueError(f"character {ch!r} not in vocabulary and no unk token")
        return out

    def encode_word(self, word):
        ids = self.cache.get(word)
        if ids is None:
            mapped = "".join(self.byte_enc[b] for b in word.encode("utf-8"))
            ids = [i for sym in self.bpe(mapped) for i in self.symbol_ids(sym)]
            self.cache[word] = ids
        return ids

    def encode(self, text):
        ids = [int(self.bos_id)] if self.add_bos and self.bos_id is not None else []
        for w in self.pre_tokenize(text):
            ids.extend(self.encode_word(w))
        return ids

    def decode(self, ids):
        data = bytes(self.byte_dec.get(c, 0x3f) for i in ids for c in self.tokens[i])
        return data.decode("utf-8", errors="replace")


# ------------------------------------------------------------------ HF directory
class HFModel:
    """An HF `LlamaForCausalLM` directory (config.json + model.safetensors) seen through the GGUF
    model's interface (GGUF metadata keys, GGUF tensor names), for checking exported students."""

    LAYER = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}

    def __init__(self, path):
        from safetensors.numpy import load_file
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            c = json.load(f)
        heads = c["num_attention_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // heads
        self.meta = {
            "general.architecture": "llama",
            "llama.block_count": c["num_hidden_layers"],
            "llama.embedding_length": c["hidden_size"],
            "llama.attention.head_count": heads,
            "llama.attention.head_count_kv": c.get("num_key_value_heads", heads),
            "llama.attention.key_length": head_dim,
            "llama.rope.dimension_count": head_dim,
            "llama.rope.freq_base": c.get("rope_theta", 10000.0),
            "llama.attention.layer_norm_rms_epsilon": c.get("rms_norm_eps", 1e-6),
            "llama.context_length": c.get("max_position_embeddings", 0),
        }
        self.tensors = {k: v.astype(np.float64) for k, v in
                        load_file(os.path.join(path, "model.safetensors")).items()}

    def get(self, key, default=None):
        return self.meta.get(key, default)

    def hf_name(self, name):
        if name.startswith("blk."):
            _, i, part, kind = name.split(".")
            return f"model.layers.{i}.{self.LAYER[part]}.{kind}"
        return {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}.get(name, name)

    def maybe(self, name):
        return self.tensors.get(self.hf_name(name))

    def tensor(self, name):
        t = self.maybe(name)
        if t is None:
            raise KeyError(f"{self.hf_name(name)} is not in model.safetensors")
        return t


# ------------------------------------------------------------------------ forward
class Llama:
    def __init__(self, model, rope_style="norm"):
        arch = model.get("general.architecture", "llama")
        g = lambda k, d=None: model.get(f"{arch}.{k}", d)  # noqa: E731
        self.n_layer = int(g("block_count"))
        self.n_embd = int(g("embedding_length"))
        self.n_head = int(g("attention.head_count"))
        self.n_head_kv = int(g("attention.head_count_kv", self.n_head))
        self.head_dim = int(g("attention.key_length", self.n_embd // self.n_head))
        self.v_dim = int(g("attention.value_length", self.head_dim))
        self.n_rot = int(g("rope.dimension_count", self.head_dim))
        self.base = float(g("rope.freq_base", 10000.0))
        self.eps = float(g("attention.layer_norm_rms_epsilon", 1e-5))
        self.context_length = int(g("context_length", 0))
        self.pos_scale = 1.0
        if g("rope.scaling.type") == "linear" and g("rope.scaling.factor"):
            self.pos_scale = 1.0 / float(g("rope.scaling.factor"))
        self.rope_style = rope_style
        t = model.tensor
        self.tok_embd = t("token_embd.weight")
        self.out_norm = t("output_norm.weight")
        self.output = model.maybe("output.weight")
        if self.output is None:
            self.output = self.tok_embd  # tied head
        self.output_bias = model.maybe("output.bias")
        self.rope_freqs = model.maybe("rope_freqs.weight")
        self.layers = []
        for i in range(self.n_layer):
            p = f"blk.{i}."
            layer = {n: t(p + n + ".weight") for n in (
                "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
            for n in ("attn_q", "attn_k", "attn_v", "attn_output",
                      "ffn_gate", "ffn_up", "ffn_down"):
                layer[n + ".bias"] = model.maybe(p + n + ".bias")
            self.layers.append(layer)

    def rms_norm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    @staticmethod
    def linear(x, layer, name):
        y = x @ layer[name].T
        b = layer.get(name + ".bias")
        return y if b is None else y + b

    def rope(self, x, pos):
        """x: [n, heads, head_dim]; rotate the first n_rot dims of each head."""
        d = self.n_rot
        inv = self.base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        if self.rope_freqs is not None:
            inv = inv / self.rope_freqs[: d // 2]
        ang = (pos * self.pos_scale)[:, None] * inv[None, :]        # [n, d/2]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        out = x.copy()
        if self.rope_style == "norm":      # adjacent pairs (x[2i], x[2i+1])
            i0, i1 = np.arange(0, d, 2), np.arange(1, d, 2)
        else:                              # neox: (x[i], x[i + d/2])
            i0, i1 = np.arange(d // 2), np.arange(d // 2, d)
        x0, x1 = x[..., i0], x[..., i1]
        out[..., i0] = x0 * cos - x1 * sin
        out[..., i1] = x0 * sin + x1 * cos
        return out

    def forward(self, ids):
        """Return (logits [n, vocab], final normed hidden states [n, n_embd])."""
        n = len(ids)
        x = self.tok_embd[np.asarray(ids, dtype=np.int64)]
        pos = np.arange(n, dtype=np.float64)
        group = self.n_head // self.n_head_kv
        mask = np.triu(np.full((n, n), -np.inf), k=1)
        scale = 1.0 / math.sqrt(self.head_dim)
        for L in self.layers:
            h = self.rms_norm(x, L["attn_norm"])
            q = self.linear(h, L, "attn_q").reshape(n, self.n_head, self.head_dim)
            k = self.linear(h, L, "attn_k").reshape(n, self.n_head_kv, self.head_dim)
            v = self.linear(h, L, "attn_v").reshape(n, self.n_head_kv, self.v_dim)
            q, k = self.rope(q, pos), self.rope(k, pos)
            k = np.repeat(k, group, axis=1)  # query head h uses kv head h // group
            v = np.repeat(v, group, axis=1)
            s = np.einsum("qhd,khd->hqk", q, k) * scale + mask
            s = s - s.max(axis=-1, keepdims=True)
            p = np.exp(s)
            p /= p.sum(axis=-1, keepdims=True)
            a = np.einsum("hqk,khd->qhd", p, v).reshape(n, self.n_head * self.v_dim)
            x = x + self.linear(a, L, "attn_output")
            h = self.rms_norm(x, L["ffn_norm"])
            gate = self.linear(h, L, "ffn_gate")
            up = self.linear(h, L, "ffn_up")
            silu = gate / (1.0 + np.exp(-gate))
            x = x + self.linear(silu * up, L, "ffn_down")
        hidden = self.rms_norm(x, self.out_norm)
        logits = hidden @ self.output.T
        if self.output_bias is not None:
            logits = logits + self.output_bias
        return logits, hidden


# ------------------------------------------------------------------------- output
def logsumexp(a, axis=-1):
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def finite_or_none(v):
    v = float(v)
    return v if math.isfinite(v) else None


def summarize(logits, hidden, ids, k, dump_logprobs):
    n, vocab = logits.shape
    k = min(k, vocab)
    logz = logsumexp(logits)
    logp = logits - logz[:, None]
    vocab_ids = np.arange(vocab)
    row = {"topk_ids": [], "topk_logprobs": [], "tail_logprob": [],
           "log_partition": [float(z) for z in logz]}
    for t in range(n):
        order = np.lexsort((vocab_ids, -logp[t]))  # desc log-prob, then lower id
        top, rest = order[:k], order[k:]
        row["topk_ids"].append([int(i) for i in top])
        row["topk_logprobs"].append([float(logp[t, i]) for i in top])
        # log(1 - sum exp(topk)) == logsumexp of the rest, without cancellation
        tail = logsumexp(logp[t, rest]) if len(rest) else -math.inf
        row["tail_logprob"].append(finite_or_none(tail))
    if n:
        e = hidden.mean(axis=0)
        row["embedding"] = [float(v) for v in e / np.linalg.norm(e)]
    else:
        row["embedding"] = []
    if dump_logprobs:
        row["logprobs_at"] = {"target_logprob":
                              [float(logp[t, ids[t + 1]]) for t in range(n - 1)]}
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", help="a GGUF file (tokenizer from its metadata)")
    src.add_argument("--hf", help="an HF LlamaForCausalLM directory (HF rotary layout); needs --ids")
    ap.add_argument("--texts", help="JSON list of strings (GGUF)")
    ap.add_argument("--ids", help="JSON list of token-id lists, instead of --texts")
    ap.add_argument("--top-k", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--dump-logprobs", action="store_true",
                    help="also write logprobs_at.target_logprob per row")
    ap.add_argument("--rope-style", choices=("norm", "neox"), default="norm",
                    help="rotary pairing; 'norm' is correct for llama GGUF")
    args = ap.parse_args(argv)
    if args.top_k < 1:
        ap.error("--top-k must be >= 1")

    if (args.texts is None) == (args.ids is None) or (args.hf and args.texts):
        ap.error("give --texts (with --gguf) or --ids")
    t0 = time.perf_counter()
    if args.hf:
        model, tok = HFModel(args.hf), None
        args.rope_style = "neox"
    else:
        model = GGUFModel(args.gguf)
        tok = Gpt2Tokenizer(model)
    net = Llama(model, rope_style=args.rope_style)
    t_load = time.perf_counter() - t0
    with open(args.texts or args.ids, encoding="utf-8") as f:
        inputs = json.load(f)
    if args.texts and not (isinstance(inputs, list) and all(isinstance(s, str) for s in inputs)):
        raise SystemExit("--texts must hold a JSON list of strings")

    rows = []
    for text in inputs:
        ids = tok.encode(text) if args.texts else [int(i) for i in text]
        if args.max_tokens is not None:
            ids = ids[: args.max_tokens]
        if ids:
            logits, hidden = net.forward(ids)
        else:
            logits = np.zeros((0, net.output.shape[0]))
            hidden = np.zeros((0, net.n_embd))
        row = {"text": text, "token_ids": ids}
        row.update(summarize(logits, hidden, ids, args.top_k, args.dump_logprobs))
        rows.append(row)
    t_total = time.perf_counter() - t0

    rope = "adjacent-pair (NORM)" if args.rope_style == "norm" else "neox (half-split)"
    source = ("HF safetensors" if args.hf else f"gguf {importlib.metadata.version('gguf')} dequantize")
    out = {"method": ("independent float64 numpy reference (scripts/llama_reference.py): "
                      f"{source}, gpt2 byte-level "
                      f"BPE with per-digit split, llama forward with {rope} rope, GQA, "
                      "SwiGLU, log-softmax at temperature 1"),
           "rows": rows}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, allow_nan=False)
    print(f"llama_reference: {len(rows)} rows, load {t_load:.2f}s, total {t_total:.2f}s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
