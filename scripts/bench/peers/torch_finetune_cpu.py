#!/usr/bin/env python3
"""PyTorch `transformers` peer for scripts/bench/finetune.sh: full fine-tuning throughput on the CPU.

The same work as distill's `finetune_bench` example, step for step: AutoModelForSequenceClassification from the
same local directory, the same fixed batches (example (i * 7919) % n of the CSV in order, cut into batches, each
padded to its longest row after truncation to --max-len), train mode (dropout on), cross-entropy, backward,
clip_grad_norm_(1.0), AdamW (no decay on biases and LayerNorm, 10x learning rate on the fresh pooler/classifier),
linear warm-up/decay schedule. --warmup steps are run first and not timed. Prints one JSON object.

Usage: torch_finetune_cpu.py --model DIR --data TRAIN.csv [--batch 32] [--max-len 64] [--steps 20] [--warmup 3]
       [--threads 2]
"""
import argparse
import csv
import json
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(42)
    with open(a.data, newline="", encoding="utf-8") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    names = sorted({c for _, c in rows})
    n = len(rows)
    total = a.steps + a.warmup
    picked = [(i * 7919) % n for i in range(a.batch * total)]
    tok = AutoTokenizer.from_pretrained(a.model)
    ids = tok([rows[i][0] for i in picked], truncation=True, max_length=a.max_len)["input_ids"]
    labels = torch.tensor([names.index(rows[i][1]) for i in picked])
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=len(names))
    model.train()
    head = lambda n: n.startswith("classifier") or "pooler" in n
    nd = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    groups = []
    for is_head in (False, True):
        ps = [(n, p) for n, p in model.named_parameters() if head(n) == is_head]
        lr = 1e-3 if is_head else 1e-4
        groups.append({"params": [p for n, p in ps if not n.endswith(nd)], "weight_decay": 0.01, "lr": lr})
        groups.append({"params": [p for n, p in ps if n.endswith(nd)], "weight_decay": 0.0, "lr": lr})
    opt = torch.optim.AdamW(groups, lr=1e-4)
    warm = max(1, int(0.1 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    timed = fwd = bwd = upd = 0.0
    tokens = 0
    loss = None
    for s in range(total):
        lo, hi = s * a.batch, (s + 1) * a.batch
        t0 = time.perf_counter()
        feats = tok.pad({"input_ids": ids[lo:hi]}, return_tensors="pt")
        out = model(**feats, labels=labels[lo:hi])
        t1 = time.perf_counter()
        out.loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
        t3 = time.perf_counter()
        el = t3 - t0
        print(f"step {s}: {el:.3f}s loss {loss:.4f}", file=sys.stderr)
        if s >= a.warmup:
            timed += el
            fwd, bwd, upd = fwd + (t1 - t0), bwd + (t2 - t1), upd + (t3 - t2)
            tokens += feats["input_ids"].numel()
    tokens_per_step = tokens / a.steps
    # The probe: the step's dominant matmul (tokens x 384 times 384 x 1536), as distill's.
    pa, pb = torch.randn(round(tokens_per_step), 384), torch.randn(384, 1536)
    for _ in range(3):
        pa @ pb
    t0 = time.perf_counter()
    for _ in range(30):
        pa @ pb
    gflops = 2 * pa.shape[0] * 384 * 1536 * 30 / (time.perf_counter() - t0) / 1e9
    config = torch.__config__.show()
    import re
    field = lambda k: (re.search(rf"{k}=([^,\n]+)", config) or [None, "?"])[1].strip()
    blas = f"{field('BLAS_INFO')} (LAPACK {field('LAPACK_INFO')}, USE_MKLDNN={field('USE_MKLDNN')}, " \
           f"USE_OPENMP={field('USE_OPENMP')})"
    versions = [l.strip() for l in config.splitlines() if "Math Kernel Library" in l or "oneDNN" in l
                or "MKL-DNN" in l or "OpenMP" in l]
    print(json.dumps({
        "impl": "torch", "torch": torch.__version__, "examples_per_s": a.steps * a.batch / timed,
        "step_s": timed / a.steps, "forward_s": fwd / a.steps, "backward_s": bwd / a.steps,
        "update_s": upd / a.steps, "padded_tokens_per_step": tokens_per_step, "last_loss": loss,
        "batch": a.batch, "max_len": a.max_len, "steps": a.steps, "threads": a.threads,
        "torch_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "mkldnn": {"available": torch.backends.mkldnn.is_available(),
                   "enabled": torch.backends.mkldnn.enabled},
        "blas": blas, "mkl": torch.backends.mkl.is_available(), "libraries": versions,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "matmul_gflops": gflops,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
