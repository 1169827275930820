#!/usr/bin/env python3
"""The PyTorch `transformers` peer for distill's `encoder-finetune` student.

Why: the GPU check (scripts/gpu-check.sh) must show distill's fine-tuning speed next to the stack people use by
default, measured in the same run on the same GPU, with the same model, batch size, maximum length, optimiser
(AdamW, decoupled weight decay except on biases and LayerNorm, linear warm-up then decay) and epochs.

It fine-tunes `AutoModelForSequenceClassification` from a local Hugging Face directory on a CSV (`text,category`),
then predicts a test CSV, and prints one JSON object (also written to --out) with examples/s, wall times, test
accuracy and prediction sentences/s.

Usage:
  torch_finetune.py --base DIR --train train.csv --test test.csv --labels categories.json \
      [--epochs 3 --batch-size 32 --max-len 64 --lr 5e-5 --weight-decay 0.01 --warmup 0.1 \
       --predict-batch 256 --device cuda --limit-train N --limit-test N --tf32 --out result.json]
"""
import argparse
import csv
import json
import math
import random
import sys
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def read_csv(path, limit, rng):
    """All rows, or a seeded random `limit` of them (the files are sorted by label, so never the first N)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    return rng.sample(rows, limit) if 0 < limit < len(rows) else rows


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def batches(ids, batch_size, shuffle, rng):
    order = list(range(len(ids)))
    if shuffle:
        rng.shuffle(order)
    for i in range(0, len(order), batch_size):
        yield order[i:i + batch_size]


def collate(tok, enc, idx, device):
    # Dynamic padding to the longest row of the batch, as distill does (inputs already truncated to --max-len).
    feats = tok.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt")
    return {k: v.to(device, non_blocking=True) for k, v in feats.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description="PyTorch transformers fine-tuning peer")
    ap.add_argument("--base", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--labels", required=True, help="JSON list of label names (categories.json)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of steps with linear warm-up")
    ap.add_argument("--predict-batch", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--limit-train", type=int, default=0, help="train on a seeded random subset of this size")
    ap.add_argument("--limit-test", type=int, default=0)
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (PyTorch's default is full f32)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out")
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    device = torch.device(a.device)

    labels = json.load(open(a.labels, encoding="utf-8"))
    label_id = {l: i for i, l in enumerate(labels)}
    train = read_csv(a.train, a.limit_train, rng)
    test = read_csv(a.test, a.limit_test, rng)
    tok = AutoTokenizer.from_pretrained(a.base)
    model = AutoModelForSequenceClassification.from_pretrained(
        a.base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_id
    ).to(device)

    t0 = time.perf_counter()
    enc = tok([t for t, _ in train], truncation=True, max_length=a.max_len)["input_ids"]
    y = torch.tensor([label_id[c] for _, c in train])
    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": a.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=a.lr, fused=device.type == "cuda")
    steps = a.epochs * math.ceil(len(enc) / a.batch_size)
    warm = max(1, int(a.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    model.train()
    losses = []
    for _ in range(a.epochs):
        for idx in batches(enc, a.batch_size, True, rng):
            feats = collate(tok, enc, idx, device)
            out = model(**feats, labels=y[idx].to(device, non_blocking=True))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
    sync(device)
    train_s = time.perf_counter() - t0

    # Prediction: length-sorted batches (as distill predict does), tokenisation included in the timing.
    model.eval()
    sync(device)
    t1 = time.perf_counter()
    texts = [t for t, _ in test]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    pred = [0] * len(texts)
    with torch.inference_mode():
        for i in range(0, len(order), a.predict_batch):
            idx = order[i:i + a.predict_batch]
            feats = tok([texts[j] for j in idx], truncation=True, max_length=a.max_len, padding=True,
                        return_tensors="pt").to(device)
            for j, p in zip(idx, model(**feats).logits.argmax(-1).tolist()):
                pred[j] = p
    sync(device)
    predict_s = time.perf_counter() - t1
    correct = sum(int(labels[p] == c) for p, (_, c) in zip(pred, test))

    result = {
        "peer": f"torch {torch.__version__} transformers AutoModelForSequenceClassification",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "tf32": a.tf32,
        "n_train": len(enc), "epochs": a.epochs, "batch_size": a.batch_size, "max_len": a.max_len, "lr": a.lr,
        "train_wall_s": round(train_s, 3),
        "examples_per_s": round(a.epochs * len(enc) / train_s, 1),
        "last_loss_per_epoch": [round(x, 4) for x in losses],
        "n_test": len(test),
        "test_accuracy": round(correct / max(1, len(test)), 4),
        "predict_wall_s": round(predict_s, 3),
        "predict_sentences_per_s": round(len(test) / predict_s, 1),
        "predict_batch": a.predict_batch,
    }
    text = json.dumps(result)
    print(text)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
