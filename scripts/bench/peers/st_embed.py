#!/usr/bin/env python3
"""Peer for scripts/bench/encoder_*.sh: PyTorch sentence-transformers on the same sentences.

Modes:
  throughput  sentences/s encoding --n sentences with batch --batch (ST sorts by length itself)
  latency     p50/p95 ms of encoding one sentence at a time
  train       end to end: embed the training CSV, fit scikit-learn LogisticRegression, test accuracy
Prints one JSON object on the last line.
"""
import argparse, csv, json, os, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("mode", choices=["throughput", "latency", "train"])
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True, help="CSV with a text column (train set for `train`)")
ap.add_argument("--test", help="test CSV (train mode)")
ap.add_argument("--n", type=int, default=2048)
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeat", type=int, default=3)
a = ap.parse_args()

os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
os.environ.setdefault("MKL_NUM_THREADS", str(a.threads))
os.environ["TOKENIZERS_PARALLELISM"] = "true"
import numpy as np
import torch

torch.set_num_threads(a.threads)
from sentence_transformers import SentenceTransformer


def read(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r.get("category") or r.get("label") for r in rows]


t_load = time.perf_counter()
model = SentenceTransformer(a.model, device="cpu")
load_s = time.perf_counter() - t_load
texts, labels = read(a.data)

if a.mode == "throughput":
    sents = (texts * (a.n // max(1, len(texts)) + 1))[: a.n]
    model.encode(sents[: a.batch * 2], batch_size=a.batch, normalize_embeddings=True)  # warm-up
    best = 0.0
    for _ in range(a.repeat):
        t = time.perf_counter()
        model.encode(sents, batch_size=a.batch, normalize_embeddings=True)
        best = max(best, len(sents) / (time.perf_counter() - t))
    print(json.dumps({"peer": "sentence-transformers", "sentences_per_s": best, "n": len(sents),
                      "batch": a.batch, "threads": a.threads, "torch": torch.__version__}))
elif a.mode == "latency":
    sents = texts[: a.n]
    for s in sents[:10]:
        model.encode([s], batch_size=1, normalize_embeddings=True)
    ms = []
    for s in sents:
        t = time.perf_counter()
        model.encode([s], batch_size=1, normalize_embeddings=True)
        ms.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"peer": "sentence-transformers", "p50_ms": float(np.percentile(ms, 50)),
                      "p95_ms": float(np.percentile(ms, 95)), "n": len(ms)}))
else:
    from sklearn.linear_model import LogisticRegression
    test_texts, test_labels = read(a.test)
    t0 = time.perf_counter()
    x = model.encode(texts, batch_size=a.batch, normalize_embeddings=True)
    t_embed = time.perf_counter() - t0
    clf = LogisticRegression(max_iter=1000)
    clf.fit(x, labels)
    wall = time.perf_counter() - t0
    xt = model.encode(test_texts, batch_size=a.batch, normalize_embeddings=True)
    acc = float((clf.predict(xt) == np.array(test_labels)).mean())
    print(json.dumps({"peer": "sentence-transformers+sklearn", "train_wall_s": wall,
                      "embed_s": t_embed, "head_s": wall - t_embed, "test_accuracy": acc,
                      "n_train": len(texts), "load_s": load_s}))
