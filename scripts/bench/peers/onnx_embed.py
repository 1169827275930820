#!/usr/bin/env python3
"""Peer for scripts/bench/encoder_inference.sh: ONNX Runtime running MiniLM exported from PyTorch
with torch.onnx.export, same tokenizer, mean pooling + L2 normalisation, length-sorted batches.

Modes: throughput (sentences/s at --batch) and latency (p50/p95 ms, one sentence at a time).
Prints one JSON object on the last line.
"""
import argparse, csv, json, os, time

ap = argparse.ArgumentParser()
ap.add_argument("mode", choices=["throughput", "latency"])
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--onnx", required=True, help="where the exported model is kept between runs")
ap.add_argument("--n", type=int, default=2048)
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--max-len", type=int, default=256)
ap.add_argument("--int8", action="store_true", help="run quantize_dynamic's int8 copy of the model")
a = ap.parse_args()

os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
import numpy as np
import onnxruntime as ort

import onnx_minilm
from transformers import AutoTokenizer

tok = AutoTokenizer.from_pretrained(a.model)
sess = onnx_minilm.session(a.model, a.onnx, tok, a.threads, int8=a.int8)
peer = "onnxruntime-int8" if a.int8 else "onnxruntime"


def embed(batch):
    enc = tok(batch, padding=True, truncation=True, max_length=a.max_len, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ["input_ids", "attention_mask", "token_type_ids"]}
    h = sess.run(None, feeds)[0]
    m = feeds["attention_mask"][..., None].astype(np.float32)
    e = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


with open(a.data, newline="") as f:
    texts = [r["text"] for r in csv.DictReader(f)]

if a.mode == "throughput":
    sents = (texts * (a.n // max(1, len(texts)) + 1))[: a.n]
    order = sorted(range(len(sents)), key=lambda i: -len(sents[i]))  # as sentence-transformers does
    embed(sents[: a.batch])
    runs = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        for i in range(0, len(order), a.batch):
            embed([sents[j] for j in order[i:i + a.batch]])
        runs.append(len(sents) / (time.perf_counter() - t))
    print(json.dumps({"peer": peer, "sentences_per_s": max(runs), "runs": runs,
                      "median_per_s": float(np.median(runs)), "n": len(sents),
                      "batch": a.batch, "threads": a.threads, "ort": ort.__version__,
                      "intra_op_threads": sess.get_session_options().intra_op_num_threads}))
else:
    sents = texts[: a.n]
    for s in sents[:10]:
        embed([s])
    ms = []
    for s in sents:
        t = time.perf_counter()
        embed([s])
        ms.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"peer": peer, "p50_ms": float(np.percentile(ms, 50)),
                      "p95_ms": float(np.percentile(ms, 95)), "n": len(ms)}))
