#!/usr/bin/env python3
"""Decoder part of the device check (scripts/gpu-check.sh): distill's GPU path on random teachers of the
real Qwen2.5-Coder shapes, against its CPU path and against PyTorch + transformers.

    python3 scripts/gpu_decoder_check.py --distill BIN --snippets SNIPPETS.jsonl --out OUT_DIR \\
        [--meta-dir .work/gpu-meta] [--models NAME,...] [--n 512] [--n-cpu 64] [--device cuda:0] \\
        [--batch-tokens 16384] [--transformers auto|require|skip]

For each `<name>.json.gz` in --meta-dir (scripts/random_llama.py extract of a real GGUF: its metadata
and tensor shapes, no weights; made by scripts/prepare-gpu-wheels.sh), or the --models among them:
  1. build a GGUF of that shape with seeded random weights in F16 (scripts/random_llama.py build) and
     the same weights as an HF Qwen2ForCausalLM directory (random_llama.py hf), under --work;
  2. `distill label` the first --n snippets on --device with --precision bf16, and the first --n-cpu on
     the CPU in f32 (the reference path), each into a fresh store, for two outputs:
       prompt  prompted sentiment (the quickstart's prompt, --chat with the model's default system
               message given explicitly, answer prefix "The review is", choices " positive" and
               " negative"): a row's two class log-probabilities;
       topk    --output token-topk --top-k 20 --dtype f16: every position's next-token top-20;
  3. numerics of the device run against the CPU run on their common rows: prompt, the max |diff| of
     the class log-probs and how often their argmax agrees; topk, how often each position's top-1
     agrees (and, where it does not, the largest gap between the CPU's top-1 and top-2 log-probs: a
     rounding flip happens near a tie, a broken path flips anywhere) and the mean (and max) |diff| of
     its log-partition;
  4. speed of the device run from its summary: real tokens/s = tokens / teacher_seconds; the share of
     the GPU's dense bf16 peak (--peak-tflops, 989 for an H100 SXM) at FLOPs/token = 2 x the body's
     parameters (every blk.* tensor, from the GGUF shapes) + 2 x hidden x vocab for topk (the head runs
     at every position; prompt scoring runs it at the continuations only; attention's own
     sequence-length term is left out); rows/s end to end (rows / the summary's wall_seconds) and
     counting the process, teacher load included;
  5. the same rows through PyTorch + transformers (bf16, attn_implementation="sdpa"; run in a child
     process): prompt, one forward of prompt+text per row (the whole prompt: transformers has no shared
     prefix), the head on the last position; topk, the row's text alone, the head at every position;
     both batched by length under the same --batch-tokens. The head's product is bf16 as transformers
     computes it (logits rounded to bf16: steps of 1/16 near 10, so near-ties flip), log-softmax and
     top-20 in float32. Timed forward only (tokenized beforehand, synchronized); tokens/s counted as
     distill counts them, so distill ÷ transformers is the ratio of rows/s. Also their agreement with
     distill's device run, on the same token ids: the rows are tokenized in distill's segments (prompt
     prefix, text as plain text, rest of the prompt), and the topk rows' ids are checked equal.
The system message is passed to distill explicitly (--system, the one the model's chat template writes
by default, as transformers' apply_chat_template renders it): distill finds a template's default system
message only where the template writes a real newline after `<|im_start|>system`, and Qwen2.5's writes
Jinja's `\\n` escape.
Prints a table (stdout) and writes OUT_DIR/decoder.json (and hf-<model>-<output>.json per transformers
run). Exits non-zero when a distill run fails, when the HF model loads with missing or unexpected
weights, or (--transformers require) when transformers cannot run. Thresholds are not enforced: the figures are for reading (the random weights make no claim about
a real model's margins); a device path that is broken shows as agreement far below 100%.

On a machine without a GPU the whole flow runs with --device cpu (the bf16 path on the CPU) and
--transformers skip (or auto, which skips when torch cannot be imported), on small --n.
Needs numpy, pyarrow, gguf (and pyyaml); transformers, tokenizers, safetensors and torch for step 5.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = "Is this movie review positive or negative? Review: {text}"
ANSWER_PREFIX = "The review is"
CHOICES = [("fresh", " positive"), ("rotten", " negative")]
TOP_K = 20


def prompt_args(system):
    args = ["--prompt", TEMPLATE, "--chat", "--answer-prefix", ANSWER_PREFIX]
    if system:
        args += ["--system", system]
    for label, cont in CHOICES:
        args += ["--choice", f"{label}={cont}"]
    return args


TOPK_ARGS = ["--output", "token-topk", "--top-k", str(TOP_K), "--dtype", "f16"]


def default_system(chat_template):
    """The system message a ChatML template writes when the conversation has none (Qwen2.5 writes it with
    Jinja's '\\n' escapes, SmolLM2 with real newlines)."""
    if not chat_template:
        return None
    t = chat_template.replace("\\n", "\n")
    key = "<|im_start|>system\n"
    best = None
    start = 0
    while True:
        i = t.find(key, start)
        if i < 0:
            break
        j = t.find("<|im_end|>", i)
        body = t[i + len(key):j] if j > 0 else ""
        if body and "{" not in body and "'" not in body and '"' not in body:  # literal text, not code
            best = body
            break
        start = i + 1
    return best


# -------------------------------------------------------------------------------------------- distill
def run_distill(args, corpus, teacher, store, device, precision, output_args, batch_tokens):
    if os.path.exists(store):
        shutil.rmtree(store)  # a fresh store: no cache hits
    cmd = [args.distill, "label", "--corpus", corpus, "--teacher", teacher, "--store", store,
           "--device", device, "--precision", precision, "--json"] + output_args
    if batch_tokens:
        cmd += ["--max-batch-tokens", str(batch_tokens)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    s = json.loads(p.stdout)
    if s.get("state") != "succeeded" or s.get("shards_failed") or s.get("cache_hits"):
        raise SystemExit(f"{' '.join(cmd)}: unexpected summary {json.dumps(s)[:2000]}")
    s["process_seconds"] = wall
    s["rows_table"] = read_rows(store, s)
    return s


def read_rows(store, summary):
    import pyarrow.parquet as pq
    with open(os.path.join(store, summary["manifest"])) as f:
        manifest = json.load(f)
    base = os.path.join(store, "v1", summary["teacher_fingerprint"], summary["output_fingerprint"], "shards")
    rows = {}
    for sh in manifest["shards"]:
        t = pq.read_table(os.path.join(base, sh["fingerprint"] + ".parquet"))
        cols = [c for c in ("id", "tokens", "logits", "token_ids", "topk_ids", "topk_logprobs",
                            "log_partition") if c in t.schema.names]
        for r in t.select(cols).to_pylist():
            rows[r["id"]] = r
    return rows


def compare_prompt(a, b):
    """Class log-probs of run a against run b on their common rows."""
    import numpy as np
    ids = [i for i in a if i in b]
    if not ids:
        return {"rows": 0}
    x = np.array([a[i]["logits"] for i in ids], dtype=np.float64)
    y = np.array([b[i]["logits"] for i in ids], dtype=np.float64)
    return {"rows": len(ids), "max_abs_diff": float(np.abs(x - y).max()),
            "mean_abs_diff": float(np.abs(x - y).mean()),
            "argmax_agreement": float((x.argmax(1) == y.argmax(1)).mean())}


def compare_topk(a, b, a_key="topk_ids", b_key="topk_ids"):
    """Per-position top-1 and log-partition of run a against run b, on common rows with equal tokens."""
    import numpy as np
    ids = [i for i in a if i in b]
    same_tokens = [i for i in ids if list(a[i]["token_ids"]) == list(b[i]["token_ids"])]
    agree = total = 0
    dz = []
    dtop = []
    flip_gaps = []  # run b's top-1 minus top-2 log-prob where the top-1s differ: rounding flips near ties
    for i in same_tokens:
        ta, tb = a[i][a_key], b[i][b_key]
        for p in range(len(ta)):
            top_a = ta[p][0] if isinstance(ta[p], (list, tuple)) else ta[p]
            top_b = tb[p][0] if isinstance(tb[p], (list, tuple)) else tb[p]
            total += 1
            agree += top_a == top_b
            lb_all = b[i]["topk_logprobs"][p]
            if top_a != top_b and isinstance(lb_all, (list, tuple)) and len(lb_all) > 1:
                flip_gaps.append(lb_all[0] - lb_all[1])
            dz.append(abs(a[i]["log_partition"][p] - b[i]["log_partition"][p]))
            if top_a == top_b:
                la = a[i]["topk_logprobs"][p]
                lb = b[i]["topk_logprobs"][p]
                dtop.append(abs((la[0] if isinstance(la, (list, tuple)) else la)
                                - (lb[0] if isinstance(lb, (list, tuple)) else lb)))
    dz = np.array(dz) if dz else np.zeros(1)
    return {"rows": len(ids), "rows_same_tokens": len(same_tokens), "positions": total,
            "top1_agreement": agree / total if total else None,
            "mean_abs_dlogpartition": float(dz.mean()), "max_abs_dlogpartition": float(dz.max()),
            "mean_abs_dtop1_logprob": float(np.mean(dtop)) if dtop else None,
            "max_gap_at_top1_flip": float(max(flip_gaps)) if flip_gaps else None}


# ------------------------------------------------------------------------------------- transformers
def hf_tokenize(tok, rows, kind, system):
    """The rows as token-id sequences for transformers, segmented as distill does (teacher/src/prompt.rs):
    the prompt's part before {text} (its trailing spaces moved to the row's text) with special tokens,
    the row's text as plain text (special-token text stays text), the rest of the prompt with special
    tokens, each continuation as plain text. flat: (row index, choice index, ids, continuation or None)."""
    def plain(text):
        return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def special(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    leading = tok("", add_special_tokens=True)["input_ids"]  # what the tokenizer puts first (BOS), if anything
    out = {"plain": plain}
    if kind == "prompt":
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": TEMPLATE}]
        full = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + ANSWER_PREFIX
        before, after = full.split("{text}")
        trimmed = before.rstrip(" ")
        lead = before[len(trimmed):]
        prefix = leading + special(trimmed)
        suffix = special(after)
        conts = [plain(c) for _, c in CHOICES]
        seqs, counted = [], []
        for r in rows:
            body = prefix + plain(lead + r["text"]) + suffix
            counted.append(len(body) - len(prefix))  # distill counts text + suffix, not the shared prefix
            if all(len(c) == 1 for c in conts):
                seqs.append([(body, None)])
            else:  # a forward per choice, the continuation's own tokens scored
                seqs.append([(body + c[:-1], c) for c in conts])
        out.update(rendered=full, lead=lead, prefix=prefix, suffix=suffix, conts=conts, counted=counted,
                   flat=[(ri, ci, s, c) for ri, group in enumerate(seqs) for ci, (s, c) in enumerate(group)])
    else:
        ids = [leading + plain(r["text"]) for r in rows]
        out.update(counted=[len(x) for x in ids], flat=[(ri, 0, s, None) for ri, s in enumerate(ids)])
    return out


def hf_bench(a):
    """Child process: the rows through transformers; writes a JSON of timings and per-row results."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from packaging import version

    dev = a.hf_device or ("cuda" if torch.cuda.is_available() else "cpu")
    with open(a.corpus) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    tok = AutoTokenizer.from_pretrained(a.hf_dir)
    dtype_kw = "dtype" if version.parse(transformers.__version__) >= version.parse("4.56") else "torch_dtype"
    t0 = time.perf_counter()
    model, info = AutoModelForCausalLM.from_pretrained(
        a.hf_dir, attn_implementation="sdpa", output_loading_info=True, **{dtype_kw: torch.bfloat16})
    model.to(dev).eval()
    load_s = time.perf_counter() - t0
    bad = {k: v for k, v in info.items() if v}
    result = {"transformers": transformers.__version__, "torch": torch.__version__, "device": str(dev),
              "gpu": torch.cuda.get_device_name(0) if dev.startswith("cuda") else None,
              "attn_implementation": getattr(model.config, "_attn_implementation", None),
              "loading_info": {k: list(v)[:20] for k, v in bad.items()}, "load_seconds": load_s}
    if bad:
        json.dump(result, open(a.result, "w"), indent=1)
        raise SystemExit(f"transformers: loading {a.hf_dir} reported {bad}")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    t = hf_tokenize(tok, rows, a.kind, a.system)
    flat, counted = t["flat"], t["counted"]
    conts, prefix, lead, plain = t.get("conts"), t.get("prefix"), t.get("lead"), t["plain"]
    if a.kind == "prompt":
        result["rendered_prompt"] = t["rendered"]
    order = sorted(range(len(flat)), key=lambda i: len(flat[i][2]))
    batches, cur = [], []
    for i in order:
        n = len(flat[i][2])
        if cur and (len(cur) + 1) * n > a.batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    head, body_model = model.lm_head, model.model  # Qwen2ForCausalLM's head and body, in every version

    def run_batch(batch):
        L = max(len(flat[i][2]) for i in batch)
        x = torch.full((len(batch), L), pad, dtype=torch.long)
        m = torch.zeros((len(batch), L), dtype=torch.long)
        for b, i in enumerate(batch):
            s = flat[i][2]
            x[b, :len(s)] = torch.tensor(s)
            m[b, :len(s)] = 1
        x, m = x.to(dev), m.to(dev)
        h = body_model(input_ids=x, attention_mask=m, use_cache=False).last_hidden_state
        out = {}
        if a.kind == "prompt" and flat[batch[0]][3] is None:  # one token per choice: the last position
            last = torch.tensor([len(flat[i][2]) - 1 for i in batch], device=h.device)
            lp = torch.log_softmax(head(h[torch.arange(len(batch), device=h.device), last]).float(), -1)
            picked = lp[:, torch.tensor([cc[0] for cc in conts], device=h.device)].cpu().tolist()
            for b, i in enumerate(batch):
                out[i] = picked[b]
        elif a.kind == "prompt":
            for b, i in enumerate(batch):  # several tokens: the continuation's positions, summed
                ri, ci, s, c = flat[i]
                pos = torch.arange(len(s) - len(c), len(s), device=h.device)
                lp = torch.log_softmax(head(h[b, pos]).float(), -1)
                out[i] = float(lp[torch.arange(len(c)), torch.tensor(c, device=h.device)].sum())
        else:
            lens = [len(flat[i][2]) for i in batch]
            sel = h[m.bool()]  # [positions, hidden], row-major: each row's positions in order
            tops, lzs, lps = [], [], []
            for c0 in range(0, sel.shape[0], a.head_chunk):
                logits = head(sel[c0:c0 + a.head_chunk]).float()
                lz = torch.logsumexp(logits, -1)
                v, k = torch.topk(logits, TOP_K, dim=-1)
                tops.append(k[:, 0])
                lps.append(v[:, 0] - lz)
                lzs.append(lz)
            top, lz, lp = (torch.cat(t).cpu().tolist() for t in (tops, lzs, lps))
            o = 0
            for b, i in enumerate(batch):
                out[i] = (top[o:o + lens[b]], lz[o:o + lens[b]], lp[o:o + lens[b]])
                o += lens[b]
        return out

    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        run_batch(batches[len(batches) // 2])  # warm-up (kernels, allocator), untimed
        sync()
        t0 = time.perf_counter()
        outs = {}
        for batch in batches:
            outs.update(run_batch(batch))
        sync()
        secs = time.perf_counter() - t0
    per_row = {}
    for i, (ri, ci, s, c) in enumerate(flat):
        rid = rows[ri]["id"]
        if a.kind == "prompt":
            if c is None:
                per_row[rid] = {"logits": outs[i]}
            else:
                per_row.setdefault(rid, {"logits": [None] * len(CHOICES)})["logits"][ci] = outs[i]
        else:
            top, lz, lp = outs[i]
            per_row[rid] = {"token_ids": s, "topk_ids": top, "log_partition": lz, "topk_logprobs": lp}
    if a.kind == "prompt":
        for ri, r in enumerate(rows):
            per_row[r["id"]]["token_ids"] = plain(lead + r["text"])
    processed = sum(len(f[2]) for f in flat)
    result.update({"kind": a.kind, "rows": len(rows), "forward_seconds": secs, "batches": len(batches),
                   "tokens": sum(counted), "processed_tokens": processed,
                   "padded_tokens": sum(len(batch) * max(len(flat[i][2]) for i in batch) for batch in batches),
                   "tokens_per_second": sum(counted) / secs, "processed_tokens_per_second": processed / secs,
                   "rows_per_second": len(rows) / secs, "per_row": per_row})
    if a.kind == "prompt":
        result["prefix_tokens"] = len(prefix)
        result["continuations"] = conts
    with open(a.result, "w") as f:
        json.dump(result, f)


def run_hf(args, hf_dir, corpus, kind, system, out_json):
    env = dict(os.environ)
    if os.environ.get("DISTILL_HF_LD_LIBRARY_PATH") is not None:  # gpu-check.sh: the path before its CUDA libs
        env["LD_LIBRARY_PATH"] = os.environ["DISTILL_HF_LD_LIBRARY_PATH"]
    cmd = [sys.executable, os.path.abspath(__file__), "hf-bench", "--hf-dir", hf_dir, "--corpus", corpus,
           "--kind", kind, "--result", out_json, "--batch-tokens", str(args.batch_tokens),
           "--head-chunk", str(args.head_chunk)]
    if system:
        cmd += ["--system", system]
    if args.hf_device:
        cmd += ["--hf-device", args.hf_device]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"transformers run failed: {' '.join(cmd)}\n{p.stderr[-4000:]}")
    with open(out_json) as f:
        return json.load(f)


def transformers_available(args):
    env = dict(os.environ)
    if os.environ.get("DISTILL_HF_LD_LIBRARY_PATH") is not None:
        env["LD_LIBRARY_PATH"] = os.environ["DISTILL_HF_LD_LIBRARY_PATH"]
    p = subprocess.run([sys.executable, "-c", "import torch, transformers, tokenizers, safetensors; "
                        "print(torch.__version__, transformers.__version__, torch.cuda.is_available())"],
                       capture_output=True, text=True, env=env)
    return p.returncode == 0, (p.stdout.strip() or p.stderr.strip().splitlines()[-1:] or [""])


# ------------------------------------------------------------------------------------------- driver
def gguf_shapes(path):
    from gguf import GGUFReader
    r = GGUFReader(path)
    body = sum(int(t.n_elements) for t in r.tensors if t.name.startswith("blk."))
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    hidden, vocab = int(emb.shape[0]), int(emb.shape[1])
    f = r.fields.get("tokenizer.chat_template")
    template = bytes(f.parts[f.data[0]]).decode() if f is not None else None
    return {"body_params": body, "hidden": hidden, "vocab": vocab, "chat_template": template}


def write_corpus(rows, path):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "hf-bench":
        ap = argparse.ArgumentParser(prog="gpu_decoder_check.py hf-bench")
        ap.add_argument("--hf-dir", required=True)
        ap.add_argument("--corpus", required=True)
        ap.add_argument("--kind", choices=("prompt", "topk"), required=True)
        ap.add_argument("--result", required=True)
        ap.add_argument("--batch-tokens", type=int, default=16384)
        ap.add_argument("--head-chunk", type=int, default=4096)
        ap.add_argument("--system", default=None)
        ap.add_argument("--hf-device", default=None)
        return hf_bench(ap.parse_args(argv[1:]))

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--distill", required=True, help="the distill binary (a CUDA build for --device cuda:N)")
    ap.add_argument("--snippets", required=True, help="JSONL corpus ({id, text} rows); the first --n are used")
    ap.add_argument("--out", required=True, help="where decoder.json (and the runs' summaries) go")
    ap.add_argument("--meta-dir", default=".work/gpu-meta")
    ap.add_argument("--models", default=None,
                    help="comma-separated names of META-DIR/<name>.json.gz (default: all there)")
    ap.add_argument("--work", default=".work/gpu-decoder", help="random teachers and stores")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=512, help="snippets labeled on --device")
    ap.add_argument("--n-cpu", type=int, default=64, help="snippets labeled on the CPU (f32)")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--precision", default="bf16", help="--precision of the --device runs")
    ap.add_argument("--batch-tokens", type=int, default=16384,
                    help="--max-batch-tokens of the --device runs and the transformers batches' budget")
    ap.add_argument("--head-chunk", type=int, default=4096, help="transformers topk: positions per head product")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device")
    ap.add_argument("--transformers", choices=("auto", "require", "skip"), default="auto")
    ap.add_argument("--hf-device", default=None, help="torch device for transformers (default: cuda if there)")
    ap.add_argument("--kinds", default="prompt,topk")
    args = ap.parse_args(argv)
    args.distill = os.path.abspath(args.distill)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)

    names = sorted(f[:-len(".json.gz")] for f in os.listdir(args.meta_dir) if f.endswith(".json.gz"))
    if args.models:
        want = args.models.split(",")
        missing = [w for w in want if w not in names]
        if missing:
            raise SystemExit(f"no {missing} in {args.meta_dir} (there: {names})")
        names = want
    if not names:
        raise SystemExit(f"no <name>.json.gz in {args.meta_dir}: run scripts/prepare-gpu-wheels.sh")
    with open(args.snippets) as f:
        snippets = [json.loads(l) for l in f if l.strip()][: max(args.n, args.n_cpu)]
    for i, r in enumerate(snippets):
        r.setdefault("id", f"line-{i + 1}")
    corpus_dev = os.path.abspath(os.path.join(args.work, f"corpus-{args.n}.jsonl"))
    corpus_cpu = os.path.abspath(os.path.join(args.work, f"corpus-{args.n_cpu}.jsonl"))
    write_corpus(snippets[: args.n], corpus_dev)
    write_corpus(snippets[: args.n_cpu], corpus_cpu)

    use_hf = args.transformers != "skip"
    hf_versions = None
    if use_hf:
        ok, hf_versions = transformers_available(args)
        if not ok:
            if args.transformers == "require":
                raise SystemExit(f"--transformers require: cannot import torch/transformers: {hf_versions}")
            print(f"transformers part skipped: cannot import torch/transformers ({hf_versions})", file=sys.stderr)
            use_hf = False
    kinds = args.kinds.split(",")
    report = {"device": args.device, "precision": args.precision, "n": len(snippets[: args.n]),
              "n_cpu": len(snippets[: args.n_cpu]), "batch_tokens": args.batch_tokens,
              "peak_tflops": args.peak_tflops, "seed": args.seed, "transformers": hf_versions if use_hf else None,
              "models": []}
    for name in names:
        t0 = time.perf_counter()
        gguf_path = os.path.join(args.work, f"{name}.random-s{args.seed}.f16.gguf")
        hf_dir = os.path.join(args.work, f"{name}.random-s{args.seed}.hf")
        if not os.path.exists(gguf_path):
            subprocess.run([sys.executable, os.path.join(HERE, "random_llama.py"), "build",
                            os.path.join(args.meta_dir, name + ".json.gz"), gguf_path,
                            "--seed", str(args.seed), "--dtype", "f16"], check=True)
        if use_hf and not os.path.exists(os.path.join(hf_dir, "model.safetensors")):
            subprocess.run([sys.executable, os.path.join(HERE, "random_llama.py"), "hf", gguf_path, hf_dir],
                           check=True)
        shapes = gguf_shapes(gguf_path)
        system = default_system(shapes.pop("chat_template"))
        m = {"model": name, "gguf_mib": os.path.getsize(gguf_path) / 2**20, **shapes, "system": system,
             "prepare_seconds": time.perf_counter() - t0, "outputs": {}}
        print(f"== {name}: body {shapes['body_params'] / 1e6:.0f}M parameters, hidden {shapes['hidden']}, "
              f"vocab {shapes['vocab']}", file=sys.stderr)
        for kind in kinds:
            out_args = prompt_args(system) if kind == "prompt" else TOPK_ARGS
            flops = 2 * shapes["body_params"] + (2 * shapes["hidden"] * shapes["vocab"] if kind == "topk" else 0)
            stores = os.path.join(args.work, "stores", name, kind)
            dev = run_distill(args, corpus_dev, gguf_path, os.path.join(stores, "device"), args.device,
                              args.precision, out_args, args.batch_tokens)
            cpu = run_distill(args, corpus_cpu, gguf_path, os.path.join(stores, "cpu"), "cpu", "f32",
                              out_args, None)
            r = {"flops_per_token": flops}
            for arm, s in (("device", dev), ("cpu", cpu)):
                tps = s["tokens"] / s["teacher_seconds"] if s["teacher_seconds"] else None
                r[arm] = {k: s[k] for k in ("rows", "tokens", "padded_tokens", "teacher_seconds",
                                            "wall_seconds", "process_seconds", "teacher_fingerprint")}
                r[arm].update({"tokens_per_second": tps,
                               "rows_per_second_end_to_end": s["rows"] / s["wall_seconds"],
                               "rows_per_second_with_load": s["rows"] / s["process_seconds"],
                               "tflops": tps * flops / 1e12 if tps else None})
            r["device"]["peak_fraction"] = (r["device"]["tflops"] or 0) / args.peak_tflops
            r["device_vs_cpu"] = (compare_prompt(dev["rows_table"], cpu["rows_table"]) if kind == "prompt"
                                  else compare_topk(dev["rows_table"], cpu["rows_table"]))
            if use_hf:
                h = run_hf(args, hf_dir, corpus_dev, kind, system,
                           os.path.join(args.out, f"hf-{name}-{kind}.json"))
                per_row = h.pop("per_row")
                if kind == "topk":  # the row's tokens as distill scored them
                    h["rows_same_tokens_as_distill"] = sum(
                        list(per_row[i]["token_ids"]) == list(dev["rows_table"][i]["token_ids"])
                        for i in per_row if i in dev["rows_table"])
                h["tflops"] = h["tokens_per_second"] * flops / 1e12
                h["peak_fraction"] = h["tflops"] / args.peak_tflops
                h["distill_over_transformers"] = r["device"]["tokens_per_second"] / h["tokens_per_second"]
                h["vs_distill_device"] = (compare_prompt(per_row, dev["rows_table"]) if kind == "prompt"
                                          else compare_topk(per_row, dev["rows_table"]))
                h["vs_distill_cpu"] = (compare_prompt(per_row, cpu["rows_table"]) if kind == "prompt"
                                       else compare_topk(per_row, cpu["rows_table"]))
                r["transformers"] = h
            m["outputs"][kind] = r
            d, c = r["device"], r["device_vs_cpu"]
            line = (f"{name:<28} {kind:<6} {args.device} {args.precision}: {d['rows']} rows {d['tokens']} tokens "
                    f"{fmt(d['tokens_per_second'], ',.0f')} tok/s ({100 * d['peak_fraction']:.2f}% of peak), "
                    f"rows/s {d['rows_per_second_end_to_end']:.1f} end to end, "
                    f"{d['rows_per_second_with_load']:.1f} with load | cpu f32 {r['cpu']['rows']} rows "
                    f"{fmt(r['cpu']['tokens_per_second'], ',.0f')} tok/s")
            if kind == "prompt":
                line += (f" | vs cpu: max|d logp| {fmt(c.get('max_abs_diff'))}, argmax "
                         f"{fmt(c.get('argmax_agreement'), '.1%')}")
            else:
                line += (f" | vs cpu: top-1 {fmt(c.get('top1_agreement'), '.1%')}, mean|dlogZ| "
                         f"{fmt(c.get('mean_abs_dlogpartition'))}")
            if use_hf:
                h = r["transformers"]
                line += (f" | transformers {fmt(h['tokens_per_second'], ',.0f')} tok/s: distill/transformers "
                         f"{h['distill_over_transformers']:.2f}")
            print(line, file=sys.stderr, flush=True)
        report["models"].append(m)
        with open(os.path.join(args.out, "decoder.json"), "w") as f:
            json.dump(report, f, indent=1)
    print_table(report, use_hf)


def print_table(report, use_hf):
    dev = f"{report['device']} {report['precision']}"
    print(f"\n### Decoder check: distill {dev} vs CPU f32 (random weights, real shapes); "
          f"{report['n']} rows on the device, {report['n_cpu']} on the CPU; batch budget "
          f"{report['batch_tokens']} tokens; peak {report['peak_tflops']:.0f} TFLOP/s\n")
    head = ["model", "output", "real tok/s", "% peak", "rows/s e2e", "rows/s w/ load", "CPU tok/s",
            "vs CPU: agreement", "vs CPU: abs diff"]
    if use_hf:
        head += ["HF tok/s", "distill ÷ HF", "HF vs distill: agreement", "HF vs distill: abs diff"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for m in report["models"]:
        for kind, r in m["outputs"].items():
            d, c = r["device"], r["device_vs_cpu"]
            if kind == "prompt":
                agree, diff = c.get("argmax_agreement"), f"max {fmt(c.get('max_abs_diff'))}"
            else:
                agree, diff = c.get("top1_agreement"), (f"logZ mean {fmt(c.get('mean_abs_dlogpartition'))}; "
                                                        f"flips at gap <= {fmt(c.get('max_gap_at_top1_flip'))}")
            cells = [m["model"], "prompt scoring" if kind == "prompt" else f"token-topk k={TOP_K}",
                     fmt(d["tokens_per_second"], ",.0f"), f"{100 * d['peak_fraction']:.2f}",
                     f"{d['rows_per_second_end_to_end']:.1f}", f"{d['rows_per_second_with_load']:.1f}",
                     fmt(r["cpu"]["tokens_per_second"], ",.0f"), fmt(agree, ".1%"), diff]
            if use_hf:
                h = r["transformers"]
                v = h["vs_distill_device"]
                if kind == "prompt":
                    ha, hd = v.get("argmax_agreement"), f"max {fmt(v.get('max_abs_diff'))}"
                else:
                    ha, hd = v.get("top1_agreement"), (f"logZ mean {fmt(v.get('mean_abs_dlogpartition'))}; "
                                                        f"flips at gap <= {fmt(v.get('max_gap_at_top1_flip'))}")
                cells += [fmt(h["tokens_per_second"], ",.0f"), f"{h['distill_over_transformers']:.2f}",
                          fmt(ha, ".1%"), hd]
            print("| " + " | ".join(cells) + " |")
    print()


if __name__ == "__main__":
    main()
