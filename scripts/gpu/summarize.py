#!/usr/bin/env python3
"""Turns the raw outputs of scripts/gpu-check.sh into its verdict: CPU-vs-CUDA parity, test accuracy, throughput,
and the ratios the CUDA issue asks for (distill on GPU vs distill on the 2-core CPU, distill vs PyTorch on the same
GPU), printed last. Writes summary.json and parity.json into --out. Exits 1 when parity fails.

Parity compares logits, which `distill predict` does not print: it prints calibrated probabilities
softmax(logits / T) with T from distill.json. Logit *differences* are recoverable exactly:
l_i - l_top = T * (ln p_i - ln p_top), so both devices' rows are compared as logits relative to the top label
(the per-row constant a softmax discards), over every label both runs printed.
"""
import argparse
import csv
import json
import math
import sys

LOGIT_TOL = 1e-3


def read_preds(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def probs_of(rec):
    """label -> probability from a prediction record, whatever shape its top-k takes."""
    for key in ("top", "top_k", "probs", "probabilities"):
        v = rec.get(key)
        if isinstance(v, dict):
            return {str(k): float(p) for k, p in v.items()}
        if isinstance(v, list) and v:
            out = {}
            for item in v:
                if isinstance(item, (list, tuple)) and len(item) == 2:
                    out[str(item[0])] = float(item[1])
                elif isinstance(item, dict):
                    lab = item.get("label")
                    p = next((item[k] for k in ("p", "prob", "probability", "confidence", "score") if k in item),
                             None)
                    if lab is not None and p is not None:
                        out[str(lab)] = float(p)
            if out:
                return out
    return {str(rec["label"]): float(rec.get("confidence", 1.0))}


def relative_logits(rec, temperature):
    p = probs_of(rec)
    top = rec["label"]
    ptop = p.get(top) or max(p.values())
    return {k: temperature * (math.log(v) - math.log(ptop)) for k, v in p.items() if v > 1e-30}


def parity(a_path, b_path, temperature):
    a, b = read_preds(a_path), read_preds(b_path)
    if len(a) != len(b):
        return {"ok": False, "error": f"{len(a)} vs {len(b)} predictions"}
    label_mismatch, max_diff, compared = 0, 0.0, 0
    for ra, rb in zip(a, b):
        label_mismatch += int(ra["label"] != rb["label"])
        la, lb = relative_logits(ra, temperature), relative_logits(rb, temperature)
        for k in la.keys() & lb.keys():
            max_diff = max(max_diff, abs(la[k] - lb[k]))
            compared += 1
    max_p = max(abs(probs_of(ra).get(k, 0) - probs_of(rb).get(k, 0)) for ra, rb in zip(a, b) for k in probs_of(ra))
    return {"ok": label_mismatch == 0 and max_diff <= LOGIT_TOL and compared > 0, "n": len(a),
            "label_mismatches": label_mismatch, "max_abs_logit_diff": max_diff, "logits_compared": compared,
            "max_abs_prob_diff": max_p, "tolerance": LOGIT_TOL}


def accuracy(pred_path, test_csv):
    preds = read_preds(pred_path)
    with open(test_csv, newline="", encoding="utf-8") as f:
        gold = [r["category"] for r in csv.DictReader(f)]
    if len(preds) != len(gold):
        raise SystemExit(f"{pred_path}: {len(preds)} predictions for {len(gold)} test rows")
    return sum(p["label"] == g for p, g in zip(preds, gold)) / max(1, len(gold)), len(gold)


def main() -> int:
    ap = argparse.ArgumentParser(description="gpu-check summary")
    ap.add_argument("--out", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--distill-json", required=True)
    ap.add_argument("--pred", required=True, help="predictions of the whole test set on the checked device")
    ap.add_argument("--parity", nargs=2, metavar=("DEVICE_PREDS", "CPU_PREDS"))
    ap.add_argument("--train-wall", type=float, required=True)
    ap.add_argument("--predict-wall", type=float, required=True)
    ap.add_argument("--predict-wall-cold", type=float, default=0)
    ap.add_argument("--torch-json")
    ap.add_argument("--cpu-examples-per-s", type=float, default=0)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()

    meta = json.load(open(a.distill_json, encoding="utf-8"))
    acc, n_test = accuracy(a.pred, a.test)
    epochs = meta.get("epochs_run") or 0
    n_train = meta.get("n_train") or 0
    d = {
        "device": a.device,
        "distill": {
            "n_train": n_train, "n_dev": meta.get("n_dev"), "epochs_run": epochs,
            "examples_per_s_reported": meta.get("examples_per_s"),
            "train_wall_s_reported": meta.get("train_wall_s"),
            "process_wall_s": a.train_wall,
            "examples_per_s_process": round(n_train * epochs / a.train_wall, 1) if a.train_wall else None,
            "dev_accuracy": meta.get("dev_accuracy"), "test_accuracy": round(acc, 4), "n_test": n_test,
            "predict_wall_s": a.predict_wall, "predict_wall_s_cold": a.predict_wall_cold,
            "predict_sentences_per_s": round(n_test / a.predict_wall, 1) if a.predict_wall else None,
            "hyper": meta.get("hyper"),
        },
    }
    ok = True
    if a.parity:
        par = parity(a.parity[0], a.parity[1], float(meta.get("temperature") or 1.0))
        d["parity"] = par
        ok = ok and par["ok"]
        json.dump(par, open(f"{a.out}/parity.json", "w"), indent=2)
    torch = None
    if a.torch_json:
        try:
            torch = json.load(open(a.torch_json, encoding="utf-8"))
            d["torch"] = torch
        except OSError:
            pass
    eps = d["distill"]["examples_per_s_reported"] or d["distill"]["examples_per_s_process"] or 0
    ratios = {}
    if a.cpu_examples_per_s > 0 and eps:
        ratios["distill_gpu_vs_distill_2core_cpu_examples_per_s"] = round(eps / a.cpu_examples_per_s, 2)
    if torch and eps:
        ratios["distill_vs_torch_train_examples_per_s"] = round(eps / torch["examples_per_s"], 3)
        if d["distill"]["predict_sentences_per_s"]:
            ratios["distill_vs_torch_predict_sentences_per_s"] = round(
                d["distill"]["predict_sentences_per_s"] / torch["predict_sentences_per_s"], 3)
    d["ratios"] = ratios
    json.dump(d, open(f"{a.out}/summary.json", "w"), indent=2)

    dd = d["distill"]
    print(f"== gpu-check summary ({a.device}) ==")
    print(f"distill fine-tune: {n_train} examples x {epochs} epochs, {eps:.1f} examples/s "
          f"(process wall {a.train_wall:.1f}s, in-loop {dd['train_wall_s_reported']}s), "
          f"dev acc {dd['dev_accuracy']}, test acc {acc:.4f} on {n_test} "
          f"[target >= 0.93: {'PASS' if acc >= 0.93 else 'MISS'}]")
    print(f"distill predict: {n_test} sentences in {a.predict_wall:.2f}s warm ({a.predict_wall_cold:.2f}s cold), "
          f"{dd['predict_sentences_per_s']} sentences/s (process wall, model load included)")
    if torch:
        print(f"torch peer: {torch['n_train']} examples x {torch['epochs']} epochs, {torch['examples_per_s']} "
              f"examples/s (wall {torch['train_wall_s']}s), test acc {torch['test_accuracy']}, predict "
              f"{torch['predict_sentences_per_s']} sentences/s at batch {torch['predict_batch']}")
    if a.parity:
        p = d["parity"]
        print(f"parity cpu vs {a.device}: {p.get('n')} sentences, {p.get('label_mismatches')} label mismatches, "
              f"max |logit diff| {p.get('max_abs_logit_diff', float('nan')):.2e} (tol {LOGIT_TOL}), "
              f"max |prob diff| {p.get('max_abs_prob_diff', float('nan')):.2e} -> {'PASS' if p['ok'] else 'FAIL'}")
    for k, v in ratios.items():
        print(f"ratio {k}: {v}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
