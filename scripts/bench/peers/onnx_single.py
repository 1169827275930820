#!/usr/bin/env python3
"""Peer for scripts/bench/serve.sh: the in-process floor for answering one request. ONNX Runtime
runs MiniLM (exported from PyTorch with torch.onnx.export, as in onnx_embed.py) on one text at a
time: tokenize, forward, mean-pool, L2-normalise, with no server, no HTTP and no classifier head.
`distill serve`'s p50 at concurrency 1 is compared against this p50.

Prints one JSON object on the last line: p50/p90/p99 ms over --n texts after a warm-up.
"""
import argparse, csv, json, os, time

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True, help="the Hugging Face encoder directory")
ap.add_argument("--data", required=True, help="a CSV with a `text` column")
ap.add_argument("--onnx", required=True, help="where the exported model is kept between runs")
ap.add_argument("--n", type=int, default=1000)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--max-len", type=int, default=256)
a = ap.parse_args()

os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
import numpy as np
import onnxruntime as ort

import onnx_minilm
from transformers import AutoTokenizer

tok = AutoTokenizer.from_pretrained(a.model)
sess = onnx_minilm.session(a.model, a.onnx, tok, a.threads)


def encode_one(text):
    enc = tok([text], truncation=True, max_length=a.max_len, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ["input_ids", "attention_mask", "token_type_ids"]}
    h = sess.run(None, feeds)[0]
    m = feeds["attention_mask"][..., None].astype(np.float32)
    e = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


with open(a.data, newline="") as f:
    texts = [r["text"] for r in csv.DictReader(f)]
sents = (texts * (a.n // max(1, len(texts)) + 1))[: a.n]
for s in sents[:50]:
    encode_one(s)
ms = []
for s in sents:
    t = time.perf_counter()
    encode_one(s)
    ms.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"peer": "onnxruntime-single", "p50_ms": float(np.percentile(ms, 50)),
                  "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
                  "n": len(ms), "threads": a.threads, "ort": ort.__version__}))
