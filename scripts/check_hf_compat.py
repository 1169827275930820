#!/usr/bin/env python3
"""Checks that an exported `encoder-finetune` student is a plain Hugging Face model: loads its directory with
`transformers.AutoModelForSequenceClassification` + `AutoTokenizer` and compares their logits with distill's own
(from the Rust side: the `emit_logits` example, which runs `load_student` + `Student::logits` as `distill predict`
does) on N test sentences. Exits 1 when the largest absolute difference exceeds --tol or a label differs.

Usage:
  scripts/check_hf_compat.py --model DIR [--data datasets/banking77/test.csv] [--n 100] [--tol 1e-4]
  scripts/check_hf_compat.py --train-tiny [--train-n 500] ...   # first fine-tune a small student (1 epoch,
                                                                 # 500 Banking77 examples, max length 64)
Run it with the project's venv (.venv/bin/python). Env: DISTILL (default target/release/distill),
     EMIT_LOGITS (default target/release/examples/emit_logits), THREADS (2).
"""
import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_texts(path):
    with open(path, newline="", encoding="utf-8") as f:
        return [r["text"] for r in csv.DictReader(f)]


def run(cmd, **kw):
    print("+ " + " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, **kw)


def train_tiny(out, n, threads, data_dir):
    distill = os.environ.get("DISTILL", os.path.join(ROOT, "target/release/distill"))
    rng = random.Random(7)
    with open(os.path.join(data_dir, "train.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows = rng.sample(rows, n)
    sub = os.path.join(os.path.dirname(out), "train-subset.csv")
    with open(sub, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "category"])
        w.writeheader()
        for r in rows:
            w.writerow({"text": r["text"], "category": r["category"]})
    run([distill, "train", "--task", os.path.join(ROOT, "datasets/banking77/task.toml"), "--data", sub,
         "--student", "encoder-finetune", "--out", out, "--epochs", "1", "--max-len", "64",
         "--batch-size", "32", "--device", "cpu", "--threads", str(threads)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="encoder-finetune model directory")
    ap.add_argument("--train-tiny", action="store_true", help="fine-tune a small student first (1 epoch)")
    ap.add_argument("--train-n", type=int, default=500)
    ap.add_argument("--data", help="CSV with a text column (default: Banking77 test)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    threads = int(os.environ.get("THREADS", "2"))
    data_dir = os.path.join(ROOT, "datasets/banking77")
    if not os.path.isfile(os.path.join(data_dir, "test.csv")):
        data_dir = os.path.join(ROOT, "..", "shared", "datasets", "banking77")
    work = tempfile.mkdtemp(prefix="hf-compat-")
    model = a.model
    if a.train_tiny:
        model = os.path.join(work, "student")
        train_tiny(model, a.train_n, threads, data_dir)
    if not model:
        ap.error("--model DIR or --train-tiny")
    meta = json.load(open(os.path.join(model, "distill.json")))
    if meta.get("kind") not in ("encoder-finetune", "encoder_finetune", "EncoderFinetune"):
        print(f"warning: distill.json kind is {meta.get('kind')!r}", file=sys.stderr)
    max_len = int(meta.get("max_len") or 128)

    texts = read_texts(a.data or os.path.join(data_dir, "test.csv"))
    texts = random.Random(42).sample(texts, min(a.n, len(texts)))
    inp = os.path.join(work, "texts.jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    emit = os.environ.get("EMIT_LOGITS", os.path.join(ROOT, "target/release/examples/emit_logits"))
    out = run([emit, "--model", model, "--input", inp, "--threads", str(threads)],
              stdout=subprocess.PIPE, text=True).stdout
    ours = [json.loads(l)["logits"] for l in out.splitlines() if l.strip()]

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model)
    hf = AutoModelForSequenceClassification.from_pretrained(model).eval()
    labels = [hf.config.id2label[i] for i in range(hf.config.num_labels)]
    if labels != list(meta["labels"]):
        print("FAIL: config.json id2label differs from distill.json labels", file=sys.stderr)
        return 1
    theirs = []
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            enc = tok(texts[i:i + 32], truncation=True, max_length=max_len, padding=True, return_tensors="pt")
            theirs.extend(hf(**enc).logits.tolist())
    diff = max(abs(x - y) for r1, r2 in zip(ours, theirs) for x, y in zip(r1, r2))
    same = sum(int(max(range(len(r1)), key=r1.__getitem__) == max(range(len(r2)), key=r2.__getitem__))
               for r1, r2 in zip(ours, theirs))
    ok = len(ours) == len(theirs) == len(texts) and diff <= a.tol and same == len(texts)
    print(json.dumps({"model": model, "n": len(texts), "max_abs_logit_diff": diff, "same_argmax": same,
                      "tol": a.tol, "transformers_arch": hf.config.architectures, "ok": ok}))
    print(f"{'OK' if ok else 'FAIL'}: max |distill - transformers| logit difference {diff:.3g} over {len(texts)} "
          f"sentences (tolerance {a.tol:g}); argmax agrees on {same}/{len(texts)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
