#!/usr/bin/env python3
"""Recompute distill eval's quality metrics with scikit-learn and fail on any mismatch.

Usage: metrics_vs_sklearn.py EVAL_DIR

EVAL_DIR holds `metrics.json` and `predictions.jsonl` as `distill eval` writes them. For
every option in metrics.json and each reference (gold, teacher) it scored against, this
recomputes accuracy, macro F1, weighted F1 and the confusion matrix from predictions.jsonl
with scikit-learn and compares them to 1e-9 (the matrix exactly). It also recomputes each
option's economics directly from its $/request, one-time cost and the settings: month 1
(one-time costs included), every later month, both savings and the break-even. Exit 0 when all
match, 1 on any mismatch (each one printed), 2 on unusable input.

A multilabel eval (each quality has a `sets` block) is checked on the label-indicator matrices
instead: exact-set `accuracy_score`, `f1_score` micro / macro (over the labels present in the
references or the answers) / weighted, `precision_recall_fscore_support` per label and
`hamming_loss`. Answer strings are label sets joined by `sets.separator` (`[]`: the empty set).

Item selection mirrors the eval: an option is scored on the items where both the reference
label and its prediction exist; options with "evaluated_on": "held_out" (cascades) only on
items whose split is "held_out"; the teacher rows' predictions are the `teacher` field.
"""
import json
import sys
from pathlib import Path

from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    hamming_loss,
    precision_recall_fscore_support,
)
from sklearn.preprocessing import MultiLabelBinarizer

TOL = 1e-9


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d = Path(sys.argv[1])
    try:
        metrics = json.loads((d / "metrics.json").read_text())
        rows = [json.loads(l) for l in (d / "predictions.jsonl").read_text().splitlines() if l.strip()]
    except (OSError, ValueError) as e:
        print(f"cannot read the eval in {d}: {e}", file=sys.stderr)
        return 2

    failures = []
    checked = 0
    for opt in metrics["options"]:
        kind = opt["kind"]
        key = "teacher" if kind in ("teacher", "teacher-batch") else opt["name"]
        for ref_name in ("gold", "teacher"):
            q = opt.get(f"vs_{ref_name}")
            if q is None:
                continue
            y_true, y_pred = [], []
            for r in rows:
                if opt["evaluated_on"] == "held_out" and r.get("split") != "held_out":
                    continue
                ref = r.get(ref_name)
                if key == "teacher":
                    pred = r.get("teacher")
                else:
                    p = r["predictions"].get(key)
                    pred = p["label"] if p else None
                if ref is None or pred is None:
                    continue
                y_true.append(ref)
                y_pred.append(pred)
            where = f"{opt['name']} vs {ref_name}"
            if len(y_true) != q["n"]:
                failures.append(f"{where}: n {len(y_true)} != {q['n']}")
                continue
            if q.get("sets") is not None:
                checked += check_sets(where, q, y_true, y_pred, failures)
                continue
            ours = {
                "accuracy": q["accuracy"]["value"],
                "macro_f1": q["macro_f1"]["value"],
                "weighted_f1": q["weighted_f1"]["value"],
            }
            theirs = {
                "accuracy": accuracy_score(y_true, y_pred),
                "macro_f1": f1_score(y_true, y_pred, average="macro", zero_division=0),
                "weighted_f1": f1_score(y_true, y_pred, average="weighted", zero_division=0),
            }
            for k in ours:
                diff = abs(ours[k] - theirs[k])
                if not diff <= TOL:
                    failures.append(f"{where}: {k} distill={ours[k]!r} sklearn={theirs[k]!r} (|diff|={diff:.3g})")
            labels = q["confusion"]["labels"]
            cm = confusion_matrix(y_true, y_pred, labels=labels).tolist()
            if cm != q["confusion"]["matrix"]:
                bad = sum(a != b for ra, rb in zip(cm, q["confusion"]["matrix"]) for a, b in zip(ra, rb))
                failures.append(f"{where}: confusion matrix differs in {bad} cells")
            checked += 1
            print(f"ok  {where}: n={q['n']} accuracy={theirs['accuracy']:.6f} "
                  f"macro_f1={theirs['macro_f1']:.6f} weighted_f1={theirs['weighted_f1']:.6f}")

    checked += check_economics(metrics, failures)

    if checked == 0:
        print("nothing to check: no option has a quality figure", file=sys.stderr)
        return 1
    for f in failures:
        print(f"MISMATCH {f}", file=sys.stderr)
    if failures:
        return 1
    print(f"all {checked} metric sets match scikit-learn (tolerance {TOL})")
    return 0


def parse_set(answer: str, sep: str) -> list:
    answer = answer.strip()
    if answer.startswith("["):
        return json.loads(answer)
    return [l.strip() for l in answer.split(sep)]


def check_sets(where, q, y_true, y_pred, failures) -> int:
    """Multilabel: every figure recomputed on indicator matrices over the task's labels."""
    sep = q["sets"]["separator"]
    labels = [c["label"] for c in q["per_class"]]
    mlb = MultiLabelBinarizer(classes=labels)
    t = mlb.fit_transform([parse_set(a, sep) for a in y_true])
    p = mlb.transform([parse_set(a, sep) for a in y_pred])
    present = [j for j in range(len(labels)) if t[:, j].any() or p[:, j].any()]
    theirs = {
        "accuracy": accuracy_score(t, p),
        "micro_f1": f1_score(t, p, average="micro", zero_division=0),
        "macro_f1": f1_score(t, p, average="macro", labels=present, zero_division=0) if present else 0.0,
        "weighted_f1": f1_score(t, p, average="weighted", zero_division=0),
        "hamming_loss": hamming_loss(t, p),
        "mean_reference_labels": t.sum() / len(t),
        "mean_predicted_labels": p.sum() / len(p),
    }
    ours = {
        "accuracy": q["accuracy"]["value"],
        "micro_f1": q["sets"]["micro_f1"]["value"],
        "macro_f1": q["macro_f1"]["value"],
        "weighted_f1": q["weighted_f1"]["value"],
        "hamming_loss": q["sets"]["hamming_loss"]["value"],
        "mean_reference_labels": q["sets"]["mean_reference_labels"],
        "mean_predicted_labels": q["sets"]["mean_predicted_labels"],
    }
    for k in ours:
        diff = abs(ours[k] - theirs[k])
        if not diff <= TOL:
            failures.append(f"{where}: {k} distill={ours[k]!r} sklearn={theirs[k]!r} (|diff|={diff:.3g})")
    prec, rec, f1, support = precision_recall_fscore_support(t, p, average=None, zero_division=0)
    for j, c in enumerate(q["per_class"]):
        for k, v in (("precision", prec[j]), ("recall", rec[j]), ("f1", f1[j])):
            if not abs(c[k] - v) <= TOL:
                failures.append(f"{where}: {c['label']} {k} distill={c[k]!r} sklearn={v!r}")
        if c["support"] != support[j]:
            failures.append(f"{where}: {c['label']} support distill={c['support']} sklearn={support[j]}")
    print(f"ok  {where}: n={q['n']} exact-set accuracy={theirs['accuracy']:.6f} "
          f"micro_f1={theirs['micro_f1']:.6f} macro_f1={theirs['macro_f1']:.6f} "
          f"hamming_loss={theirs['hamming_loss']:.6f}")
    return 1


def check_economics(metrics, failures) -> int:
    """Month 1 = requests × $/request + one-time; later months = requests × $/request;
    saving = 1 − option ÷ teacher; break-even = one-time ÷ (teacher − option) $/request."""
    s = metrics["settings"]
    month = s["volume_per_day"] * s["days_per_month"]
    teacher = metrics["teacher"]["per_request_usd"]
    checked = 0
    for opt in metrics["options"]:
        c = opt["cost"]
        p = c["per_request_usd"]
        if p is None or not teacher:
            continue
        want = {
            "monthly_usd": p * month + c["one_time_usd"],
            "steady_monthly_usd": p * month,
            "saving": 1 - (p * month + c["one_time_usd"]) / (teacher * month),
            "steady_saving": 1 - p / teacher,
        }
        if opt["kind"] not in ("teacher", "teacher-batch") and teacher > p:
            want["break_even_requests"] = c["one_time_usd"] / (teacher - p)
        for k, v in want.items():
            got = c.get(k)
            if got is None or not abs(got - v) <= 1e-9 * max(1.0, abs(v)):
                failures.append(f"{opt['name']}: {k} distill={got!r} python={v!r}")
        checked += 1
        print(f"ok  {opt['name']} economics: month 1 ${want['monthly_usd']:.2f} ({want['saving']:.1%}), "
              f"then ${want['steady_monthly_usd']:.2f}/month ({want['steady_saving']:.1%})")
    return checked


if __name__ == "__main__":
    sys.exit(main())
