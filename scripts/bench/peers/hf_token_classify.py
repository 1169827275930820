#!/usr/bin/env python3
"""The peer of distill's tag_throughput example: transformers' AutoModelForTokenClassification on the same
turns, tokenised as distill lays them out (text, then the context columns' values joined by " ; " as the second
segment), in batches of the same size ordered by length as distill's are, the same warm-up and repetitions,
median sentences/s. Prints JSON."""
import argparse, json, statistics, time

import torch
import transformers
from transformers import AutoModelForTokenClassification, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--n", type=int, default=2048)
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
meta = json.load(open(f"{a.model}/distill.json"))
cols = meta.get("context_columns") or []
rows = [json.loads(l) for l in open(a.data, encoding="utf-8")][: a.n]
def ctx(r):
    vals = [", ".join(r[c]) if isinstance(r.get(c), list) else str(r.get(c) or "") for c in cols]
    return " ; ".join(v for v in vals if v.strip())
# Longest first, as sentence-transformers orders its batches (and distill does): less padding.
rows.sort(key=lambda r: -len(r["text"] + ctx(r)))
texts = [r["text"] for r in rows]
pairs = [ctx(r) for r in rows]
tok = AutoTokenizer.from_pretrained(a.model)
model = AutoModelForTokenClassification.from_pretrained(a.model).eval()
max_len = int(meta.get("max_len") or 64)

def run():
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(texts), a.batch):
            second = pairs[i:i + a.batch]
            enc = tok(texts[i:i + a.batch], second if any(second) else None, truncation=True,
                      max_length=max_len, padding=True, return_tensors="pt")
            model(**enc).logits.argmax(-1)
    return len(texts) / (time.perf_counter() - t)

run()
rates = [run() for _ in range(a.reps)]
print(json.dumps({"sentences_per_s": statistics.median(rates), "n": len(texts), "batch": a.batch, "reps": a.reps,
                  "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "transformers": transformers.__version__}))
