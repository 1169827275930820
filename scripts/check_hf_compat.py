#!/usr/bin/env python3
"""Checks that an exported `encoder-finetune` student is a plain Hugging Face model: loads its directory with
`transformers.AutoModelForSequenceClassification` + `AutoTokenizer` and compares their logits with distill's own
(from the Rust side: the `emit_logits` example, which runs `load_student` + `Student::logits` as `distill predict`
does) on N test sentences. Exits 1 when the largest absolute difference exceeds --tol or a label differs.
An extract task's encoder tagger is checked the same way with `AutoModelForTokenClassification`: per-token
logits on the ids distill lays out ([CLS] text [SEP] context [SEP], token types 0 then 1), which the
tokenizer, asked for the same pair, must also produce.

Usage:
  scripts/check_hf_compat.py --model DIR [--data datasets/banking77/test.csv] [--n 100] [--tol 1e-4]
  scripts/check_hf_compat.py --train-tiny [--train-n 500] ...   # first fine-tune a small student (1 epoch,
                                                                 # 500 Banking77 examples, max length 64)
  scripts/check_hf_compat.py --train-tiny-tagger [--train-n 500] # the same for a Restaurant-8k encoder tagger
                                                                 # (data: datasets/restaurant8k/test.jsonl)
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


def train_tiny_tagger(out, n, threads):
    distill = os.environ.get("DISTILL", os.path.join(ROOT, "target/release/distill"))
    rows = [json.loads(l) for l in open(os.path.join(ROOT, "datasets/restaurant8k/train.jsonl"), encoding="utf-8")]
    rows = random.Random(7).sample(rows, n)
    sub = os.path.join(os.path.dirname(out), "train-records.jsonl")
    with open(sub, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"id": r["id"], "text": r["text"], "status": "ok",
                                "context": {"requested_slots": ", ".join(r["requested_slots"])},
                                "output": {"spans": r["spans"]}, "provider": "gold", "model": "gold"}) + "\n")
    run([distill, "train", "--task", os.path.join(ROOT, "datasets/restaurant8k/task.toml"), "--data", sub,
         "--student", "encoder-finetune", "--base", os.path.join(ROOT, "models/base/all-MiniLM-L6-v2"),
         "--out", out, "--epochs", "1", "--device", "cpu", "--threads", str(threads)])


def check_tagger(model, meta, a, threads, work):
    """The token-classification export: transformers' logits on distill's ids, and its tokenizer's ids."""
    rows = [json.loads(l) for l in open(a.data or os.path.join(ROOT, "datasets/restaurant8k/test.jsonl"),
                                        encoding="utf-8")]
    rows = random.Random(42).sample(rows, min(a.n, len(rows)))
    cols = meta.get("context_columns") or []
    inp = os.path.join(work, "inputs.jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for r in rows:
            ctx = {c: ", ".join(r[c]) if isinstance(r.get(c), list) else str(r.get(c) or "") for c in cols}
            f.write(json.dumps({"text": r["text"], "context": ctx}) + "\n")
    emit = os.environ.get("EMIT_LOGITS", os.path.join(ROOT, "target/release/examples/emit_logits"))
    out = run([emit, "--model", model, "--input", inp, "--threads", str(threads)],
              stdout=subprocess.PIPE, text=True).stdout
    ours = [json.loads(l) for l in out.splitlines() if l.strip()]

    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model)
    hf = AutoModelForTokenClassification.from_pretrained(model).eval()
    tags = [hf.config.id2label[i] for i in range(hf.config.num_labels)]
    want = ["O"] + [f"{p}-{s}" for s in meta["slots"] for p in ("B", "I")]
    if tags != want:
        print(f"FAIL: config.json id2label {tags} is not the BIO tags of {meta['slots']}", file=sys.stderr)
        return 1
    diff, same_tags, same_ids = 0.0, 0, 0
    with torch.no_grad():
        for r, o in zip(rows, ours):
            ids = torch.tensor([o["ids"]])
            types = torch.tensor([o["type_ids"]])
            logits = hf(input_ids=ids, token_type_ids=types, attention_mask=torch.ones_like(ids)).logits[0].tolist()
            diff = max([diff] + [abs(x - y) for r1, r2 in zip(o["logits"], logits) for x, y in zip(r1, r2)])
            argmax = lambda v: max(range(len(v)), key=v.__getitem__)
            same_tags += all(argmax(x) == argmax(y) for x, y in zip(o["logits"], logits))
            ctx = " ; ".join(v for v in (", ".join(r[c]) if isinstance(r.get(c), list) else str(r.get(c) or "")
                                         for c in cols) if v.strip())
            enc = tok(r["text"], ctx) if ctx else tok(r["text"])
            same_ids += enc["input_ids"] == o["ids"] and enc["token_type_ids"] == o["type_ids"]
    n = len(rows)
    ok = len(ours) == n and diff <= a.tol and same_tags == n and same_ids == n
    print(json.dumps({"model": model, "n": n, "max_abs_logit_diff": diff, "same_tags": same_tags,
                      "same_ids_as_tokenizer": same_ids, "tol": a.tol,
                      "transformers_arch": hf.config.architectures, "ok": ok}))
    print(f"{'OK' if ok else 'FAIL'}: max |distill - transformers| token logit difference {diff:.3g} over {n} "
          f"inputs (tolerance {a.tol:g}); every tag agrees on {same_tags}/{n}; the tokenizer gives distill's ids "
          f"on {same_ids}/{n}")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="encoder-finetune model directory")
    ap.add_argument("--train-tiny", action="store_true", help="fine-tune a small student first (1 epoch)")
    ap.add_argument("--train-tiny-tagger", action="store_true",
                    help="fine-tune a small Restaurant-8k encoder tagger first (1 epoch)")
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
    if a.train_tiny_tagger:
        model = os.path.join(work, "tagger")
        train_tiny_tagger(model, a.train_n, threads)
    if not model:
        ap.error("--model DIR, --train-tiny or --train-tiny-tagger")
    meta = json.load(open(os.path.join(model, "distill.json")))
    if meta.get("kind") == "tagger":
        return check_tagger(model, meta, a, threads, work)
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
