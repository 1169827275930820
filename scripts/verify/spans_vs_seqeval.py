#!/usr/bin/env python3
"""Cross-checks distill's span metrics (crates/distill-eval/src/span_metrics.rs) against
seqeval on the same predictions.

Input: a JSON file {"texts", "slots", "reference", "predicted", "scores"}: one span list
({"slot", "start", "end"}, offsets in characters) per text, and the scores distill computed.

Exact-match precision, recall, F1 (micro and per slot, with support) come from seqeval in
strict IOB2 mode over *character* tokens: a span becomes B-slot on its first character and
I-slot on the rest, so seqeval's entity match is exactly distill's (slot, start, end) match
for any tokenisation. Partial-overlap figures and the share of exactly right inputs have no
seqeval counterpart and are recomputed here from their definitions.

usage: spans_vs_seqeval.py FILE   (exit 1 on any mismatch)
"""
import json
import sys

from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2


def tags(text, spans):
    out = ["O"] * len(text)
    for s in spans:
        out[s["start"]] = "B-" + s["slot"]
        for i in range(s["start"] + 1, s["end"]):
            out[i] = "I-" + s["slot"]
    return out


def partial(reference, predicted):
    hits = 0
    for ref, pred in zip(reference, predicted):
        paired = [False] * len(ref)
        for p in pred:
            for i, r in enumerate(ref):
                if not paired[i] and r["slot"] == p["slot"] and r["start"] < p["end"] and p["start"] < r["end"]:
                    paired[i] = True
                    hits += 1
                    break
    n_ref = sum(map(len, reference))
    n_pred = sum(map(len, predicted))
    p = hits / n_pred if n_pred else 0.0
    r = hits / n_ref if n_ref else 0.0
    f = 2 * hits / (n_pred + n_ref) if n_pred + n_ref else 0.0
    return p, r, f


def main(path):
    d = json.load(open(path, encoding="utf-8"))
    texts, reference, predicted, got = d["texts"], d["reference"], d["predicted"], d["scores"]
    y_true = [tags(t, s) for t, s in zip(texts, reference)]
    y_pred = [tags(t, s) for t, s in zip(texts, predicted)]
    kw = dict(mode="strict", scheme=IOB2, zero_division=0)
    checks = [
        ("exact precision", precision_score(y_true, y_pred, **kw), got["exact"]["precision"]),
        ("exact recall", recall_score(y_true, y_pred, **kw), got["exact"]["recall"]),
        ("exact F1 (micro)", f1_score(y_true, y_pred, **kw), got["exact"]["f1"]["value"]),
    ]
    report = classification_report(y_true, y_pred, output_dict=True, **kw)
    for s in got["per_slot"]:
        want = report.get(s["slot"], {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
        checks += [
            (f"{s['slot']} precision", want["precision"], s["precision"]),
            (f"{s['slot']} recall", want["recall"], s["recall"]),
            (f"{s['slot']} F1", want["f1-score"], s["f1"]),
            (f"{s['slot']} support", want["support"], s["support"]),
        ]
    pp, pr, pf = partial(reference, predicted)
    key = lambda spans: sorted((s["slot"], s["start"], s["end"]) for s in spans)
    exact_inputs = sum(key(r) == key(p) for r, p in zip(reference, predicted)) / len(texts)
    checks += [
        ("partial precision", pp, got["partial"]["precision"]),
        ("partial recall", pr, got["partial"]["recall"]),
        ("partial F1", pf, got["partial"]["f1"]["value"]),
        ("exactly right inputs", exact_inputs, got["exact_inputs"]["value"]),
    ]
    bad = 0
    for name, want, have in checks:
        ok = abs(want - have) <= 1e-9
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {name:28} reference {want:.6f}  distill {have:.6f}")
    from importlib.metadata import version
    print(f"seqeval {version('seqeval')}: {len(texts)} inputs, "
          f"{sum(map(len, reference))} reference spans, {len(checks) - bad}/{len(checks)} figures agree")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
