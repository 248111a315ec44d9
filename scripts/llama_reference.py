#!/usr/bin/env python3
"""Independent float64 numpy reference for llama- and qwen2-architecture GGUF decoder LMs.

Used by the Rust tests to check the project's own tokenizer and forward pass.
It imports nothing from the project. Dependencies (versions used when it was
written): numpy (2.4.6), gguf==0.19.0 (GGUF reader + `gguf.quants.dequantize`),
regex (2026.5.9, for \\p{L}/\\p{N} classes). Install with
    python3 -m pip install gguf==0.19.0 regex numpy

Method
------
Tokenizer (`tokenizer.ggml.model == "gpt2"`, byte-level BPE):
  1. pre-tokenize, by `tokenizer.ggml.pre`:
     - "qwen2": split with Qwen2's regex (QWEN2_PATTERN below: case-insensitive
       contractions, an optional non-letter/non-digit char glued to a letter run,
       single \\p{N} chars, punctuation runs with trailing newlines, ...). No
       separate digit step (\\p{N} already matches one char at a time) and no
       Unicode normalization (HF's Qwen2 tokenizer applies NFC first; input that
       is already NFC, as ordinary text is, tokenizes the same).
     - anything else (SmolLM2's "smollm", the students' files): every numeric
       character (\\p{N}, as HF `Digits(individual_digits=True)`, i.e. Rust
       `char::is_numeric`) becomes its own piece; each piece is then split with
       the GPT-2 regex (GPT2_PATTERN below).
     No prefix space in either case.
  2. each word's UTF-8 bytes are mapped through the GPT-2 byte->unicode table.
  3. BPE: repeatedly merge the adjacent pair with the lowest merge rank
     (rank = index in `tokenizer.ggml.merges`, leftmost on ties); per-word cache.
  4. pieces -> ids via `tokenizer.ggml.tokens`. Control-token text such as
     "<|im_start|>" inside the input is ordinary text (never a control token).
  5. if `tokenizer.ggml.add_bos_token` is true (default false), prepend bos id.
Forward (float64 arithmetic; y = x @ W.T with W oriented [out, in]):
  embedding lookup; per block: RMSNorm -> q/k/v (+ optional biases, present in
  qwen2) -> rotary embedding -> causal softmax attention with GQA (kv head j
  serves query heads j*group .. j*group+group-1), scale 1/sqrt(head_dim) ->
  attn_output -> residual; RMSNorm -> SwiGLU down(silu(gate(x)) * up(x)) ->
  residual. Final output_norm, logits = h @ output.weight.T (token_embd.weight
  when output.weight is absent). Hyper-parameters from `<arch>.*` metadata
  (RMSNorm eps `<arch>.attention.layer_norm_rms_epsilon`, rope base
  `<arch>.rope.freq_base`, `<arch>.attention.head_count_kv`).
  Weights: a GGUF file is memory-mapped and its tensors are dequantized with
  `gguf.quants.dequantize` (which yields float32) and widened to float64 only
  while they are used, never all at once: the texts run through the network
  together, block by block (one block's matrices in float64 at a time; each
  text's arithmetic is the same as running it alone), the token embeddings are
  dequantized only for the rows looked up, and the output matrix is used whole
  when it is small (<= 2**26 values, e.g. SmolLM2's tied 49152 x 576) or else
  in slices of 16384 vocabulary rows (Qwen2.5's 151936 x 896), for groups of
  texts whose logits fit in about 1 GiB. Peak memory is therefore about one
  block's matrices + one output slice + the logits of one group in float64,
  plus the tokenizer's tables and the mapped file's pages (Qwen2.5-Coder-0.5B:
  1.4 GB peak RSS; 1.5B: 2.2 GB). (An HF directory, --hf, is held in float64.)
  Rotary, picked from general.architecture (`--rope-style` overrides):
  - llama: llama.cpp's converter permutes llama q/k weights so GGUF uses the
    "adjacent pairs" (NORM) rope: (x[2i], x[2i+1]) rotated by
    pos * base^(-2i/d), d = rope.dimension_count (dims beyond d untouched);
  - qwen2: the converter keeps HF's layout, so GGUF uses the NEOX rope:
    (x[i], x[i+d/2]) rotated by pos * base^(-2i/d).
  Any other architecture needs an explicit --rope-style.

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
      --out OUT.json [--max-tokens N] [--dump-logprobs] [--rope-style norm|neox]
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
# Qwen2's published pre-tokenizer regex (tokenizer.json of Qwen2 / Qwen2.5).
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                 r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Rotary pairing of each architecture's GGUF q/k layout.
ROPE_STYLE = {"llama": "norm", "qwen2": "neox"}
# The output matrix is used whole up to this many values, else in slices of HEAD_SLICE rows;
# texts are grouped so that one group's float64 logits stay under LOGITS_BUDGET bytes.
HEAD_WHOLE = 1 << 26
HEAD_SLICE = 16384
LOGITS_BUDGET = 1 << 30


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

    def shape(self, name):
        """numpy (PyTorch) orientation: GGUF stores dims fastest-first (ne0 = input
        features); the reader's `t.shape` is that order, so the numpy shape is
        reversed(t.shape), i.e. [out, in] for matrices."""
        return tuple(int(d) for d in reversed(list(self.tensors[name].shape)))

    def tensor(self, name):
        """Dequantize one tensor to float64 in numpy (PyTorch) orientation."""
        t = self.tensors[name]
        arr = dequantize(t.data, t.tensor_type)
        return np.asarray(arr, dtype=np.float64).reshape(self.shape(name))

    def rows(self, name, index):
        """Rows `index` (an int array or a slice) of a matrix, dequantized to float64.

        The reader's data holds one row per entry (quantized rows are whole blocks),
        so only the selected rows are dequantized."""
        t = self.tensors[name]
        shape = self.shape(name)
        data = t.data.reshape(shape[0], -1)[index]
        arr = dequantize(np.ascontiguousarray(data), t.tensor_type)
        return np.asarray(arr, dtype=np.float64).reshape(-1, shape[1])

    def has(self, name):
        return name in self.tensors

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
        self.pre = model.get("tokenizer.ggml.pre")
        self.digit_re = regex.compile(DIGIT_PATTERN)
        self.word_re = regex.compile(QWEN2_PATTERN if self.pre == "qwen2" else GPT2_PATTERN)
        self.cache = {}

    def pre_tokenize(self, text):
        if self.pre == "qwen2":
            return self.word_re.findall(text)
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

    def shape(self, name):
        return self.tensor(name).shape

    def rows(self, name, index):
        return self.tensor(name)[index]

    def has(self, name):
        return self.hf_name(name) in self.tensors

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
    """The decoder; weights are fetched from the model block by block (see Method)."""

    LAYER_WEIGHTS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                     "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    LAYER_BIASES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")

    def __init__(self, model, rope_style=None):
        arch = model.get("general.architecture", "llama")
        g = lambda k, d=None: model.get(f"{arch}.{k}", d)  # noqa: E731
        self.arch = arch
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
        if rope_style is None:
            if arch not in ROPE_STYLE:
                raise SystemExit(f"no known rotary layout for general.architecture {arch!r}: "
                                 "give --rope-style norm|neox")
            rope_style = ROPE_STYLE[arch]
        self.rope_style = rope_style
        self.model = model
        self.out_norm = model.tensor("output_norm.weight")
        self.output_name = "output.weight" if model.has("output.weight") else "token_embd.weight"
        self.vocab = model.shape(self.output_name)[0]
        self.output_bias = model.maybe("output.bias")
        self.rope_freqs = model.maybe("rope_freqs.weight")
        self._head = None  # the whole output matrix in float64, when it is small

    def layer(self, i):
        """Block i's weights in float64 (dequantized now; dropped by the caller after use)."""
        p, m = f"blk.{i}.", self.model
        layer = {n: m.tensor(p + n + ".weight") for n in self.LAYER_WEIGHTS}
        for n in self.LAYER_BIASES:
            layer[n + ".bias"] = m.maybe(p + n + ".bias")
        return layer

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

    def block(self, x, L):
        """One transformer block over one text's hidden states x [n, n_embd]."""
        n = x.shape[0]
        pos = np.arange(n, dtype=np.float64)
        group = self.n_head // self.n_head_kv
        mask = np.triu(np.full((n, n), -np.inf), k=1)
        scale = 1.0 / math.sqrt(self.head_dim)
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
        return x + self.linear(silu * up, L, "ffn_down")

    def hidden_states(self, seqs):
        """Final normed hidden states [n_i, n_embd] of every non-empty id list, block-major:
        each block's weights are dequantized once and applied to every text in turn."""
        xs = [self.model.rows("token_embd.weight", np.asarray(ids, dtype=np.int64))
              for ids in seqs]
        for i in range(self.n_layer):
            L = self.layer(i)
            xs = [self.block(x, L) for x in xs]
            del L
        return [self.rms_norm(x, self.out_norm) for x in xs]

    def head_slices(self):
        """(start, stop, W [stop - start, n_embd] float64) over the output matrix's rows."""
        rows, cols = self.model.shape(self.output_name)
        if rows * cols <= HEAD_WHOLE:
            if self._head is None:
                self._head = self.model.tensor(self.output_name)
            yield 0, rows, self._head
            return
        for a in range(0, rows, HEAD_SLICE):
            b = min(rows, a + HEAD_SLICE)
            yield a, b, self.model.rows(self.output_name, slice(a, b))

    def logits(self, hiddens):
        """Logits [n_i, vocab] for a group of texts' hidden states."""
        out = [np.empty((h.shape[0], self.vocab)) for h in hiddens]
        for a, b, w in self.head_slices():
            for h, o in zip(hiddens, out):
                o[:, a:b] = h @ w.T
        if self.output_bias is not None:
            for o in out:
                o += self.output_bias
        return out

    def forward_many(self, seqs):
        """Yield (logits [n, vocab], hidden [n, n_embd]) for each id list, in order."""
        live = [i for i, ids in enumerate(seqs) if ids]
        hidden = dict(zip(live, self.hidden_states([seqs[i] for i in live])))
        per_position = self.vocab * 8
        i = 0
        while i < len(seqs):
            group, positions = [], 0
            while i < len(seqs) and (not group or positions + len(seqs[i]) * per_position
                                     <= LOGITS_BUDGET):
                group.append(i)
                positions += len(seqs[i]) * per_position
                i += 1
            done = dict(zip([j for j in group if j in hidden],
                            self.logits([hidden[j] for j in group if j in hidden])))
            for j in group:
                if j in done:
                    yield done[j], hidden.pop(j)
                else:
                    yield np.zeros((0, self.vocab)), np.zeros((0, self.n_embd))


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
    ap.add_argument("--rope-style", choices=("norm", "neox"), default=None,
                    help="rotary pairing; default from general.architecture "
                         "(llama: norm, qwen2: neox)")
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

    seqs = []
    for text in inputs:
        ids = tok.encode(text) if args.texts else [int(i) for i in text]
        if args.max_tokens is not None:
            ids = ids[: args.max_tokens]
        seqs.append(ids)
    rows = []
    for text, ids, (logits, hidden) in zip(inputs, seqs, net.forward_many(seqs)):
        row = {"text": text, "token_ids": ids}
        row.update(summarize(logits, hidden, ids, args.top_k, args.dump_logprobs))
        rows.append(row)
    t_total = time.perf_counter() - t0

    rope = "adjacent-pair (NORM)" if net.rope_style == "norm" else "neox (half-split)"
    source = ("HF safetensors" if args.hf else f"gguf {importlib.metadata.version('gguf')} dequantize")
    split = "Qwen2 regex" if tok is not None and tok.pre == "qwen2" else "per-digit split"
    out = {"method": ("independent float64 numpy reference (scripts/llama_reference.py): "
                      f"{source}, gpt2 byte-level "
                      f"BPE with {split}, {net.arch} forward with {rope} rope, GQA, "
                      "SwiGLU, log-softmax at temperature 1"),
           "rows": rows}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, allow_nan=False)
    print(f"llama_reference: {len(rows)} rows, load {t_load:.2f}s, total {t_total:.2f}s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
