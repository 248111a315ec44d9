#!/usr/bin/env python3
"""PyTorch + transformers on the CPU in f32, the anchor for distill's decoder forward: the same GGUF
file (transformers dequantizes it to f32 at load), the same review snippets, the same threads, batches
of length-sorted rows under the same token budget as `distill bench teacher` (rows × padded length ≤
4096), the body only (final hidden states, as distill's `--output embeddings`). Prints and writes
real tokens/s (tokens of the rows, padding excluded) and the padding efficiency.

    python3 scripts/hf_decoder_bench.py MODEL.gguf SNIPPETS.jsonl LIMIT OUT.json [THREADS]

Needs torch and transformers (scripts/bench-decoders.sh installs them into .work/torch-venv).
"""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    model_path, snippets, limit, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else os.cpu_count()
    torch.set_num_threads(threads)
    d, f = os.path.dirname(os.path.abspath(model_path)), os.path.basename(model_path)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    load = time.perf_counter() - t0
    texts = [json.loads(l)["text"] for l in open(snippets)][:limit]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    # Length-sorted, rows × longest ≤ 4096, and (as distill plans them) a batch of at least 1,024 slots
    # is cut before its padding passes 3%.
    batches, cur, real = [], [], 0
    for i in order:
        n = len(rows[i])
        slots = (len(cur) + 1) * n
        if cur and (slots > 4096 or (len(cur) * n >= 1024 and slots - real - n > 0.03 * slots)):
            batches.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += n
    if cur:
        batches.append(cur)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def run():
        real = slots = 0
        start = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                t = max(len(rows[i]) for i in b)
                ids = torch.full((len(b), t), pad, dtype=torch.long)
                mask = torch.zeros((len(b), t), dtype=torch.long)
                for j, i in enumerate(b):
                    ids[j, : len(rows[i])] = torch.tensor(rows[i])
                    mask[j, : len(rows[i])] = 1
                model.model(input_ids=ids, attention_mask=mask)
                real += sum(len(rows[i]) for i in b)
                slots += len(b) * t
        return real, slots, time.perf_counter() - start

    run()  # warm-up
    real, slots, secs = run()
    r = {"model": f, "torch": torch.__version__, "threads": threads, "texts": len(rows),
         "real_tokens": real, "seconds": secs, "real_tokens_per_second": real / secs,
         "padding_efficiency": real / slots, "load_seconds": load}
    print(f"transformers {__import__('transformers').__version__} f32, {threads} threads: {f} body on "
          f"{len(rows)} snippets: {r['real_tokens_per_second']:.0f} real tokens/s "
          f"(padding efficiency {r['padding_efficiency']:.3f})")
    json.dump(r, open(out, "w"), indent=1)


if __name__ == "__main__":
    main()
