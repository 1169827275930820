#!/usr/bin/env python3
"""Recomputes a route eval's metrics from its predictions.jsonl, independently of distill.

For every router and the oracle, on the held-out items: the curve over every threshold (tier 0
when the router's score >= threshold, else the top tier), PGR = (quality - cheap) / (premium -
cheap), APGR = trapezoid area of PGR over the premium share, CPT(x) = the premium share where
PGR first reaches x (linear between points); and the quality, premium share and cost at the
threshold eval chose. Compares each with metrics.json. Two tiers (RouteLLM's setting).

Usage: route_metrics.py EVAL_DIR
"""
import json
import math
import sys


def curve(items, scores):
    """(premium share, quality, cost) for every threshold."""
    ts = sorted(set(scores))
    ts.append(ts[-1] + 1.0 if ts[-1] >= 1.0 else 1.0 + 1e-9)
    n = len(items)
    out = []
    for t in ts:
        q = sh = c = 0.0
        for (passed, cost), s in zip(items, scores):
            tier = 0 if s >= t else 1
            q += passed[tier]
            sh += tier == 1
            c += cost[tier]
        out.append((sh / n, q / n, c / n, t))
    return out


def gap(points, cheap, premium):
    pts = sorted(((s, (q - cheap) / (premium - cheap)) for s, q, *_ in points))
    apgr = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(pts, pts[1:]))

    def cpt(x):
        if pts[0][1] >= x:
            return pts[0][0]
        for (s0, g0), (s1, g1) in zip(pts, pts[1:]):
            if g0 < x <= g1:
                return s0 + ((x - g0) / (g1 - g0) if g1 != g0 else 1.0) * (s1 - s0)
        return None

    return apgr, cpt(0.2), cpt(0.5), cpt(0.8)


def oracle(items):
    n = len(items)
    fixes = sum(1 for p, _ in items if not p[0] and p[1])
    order = [i for i, (p, _) in enumerate(items) if not p[0] and p[1]]
    order += [i for i, (p, _) in enumerate(items) if not (not p[0] and p[1])]
    choice = [0] * n
    pts = []

    def point():
        q = sum(items[i][0][choice[i]] for i in range(n)) / n
        return (sum(choice) / n, q)

    pts.append(point())
    for i in order:
        choice[i] = 1
        pts.append(point())
    del fixes
    return pts


def close(a, b, what, errors, tol=1e-9):
    if a is None or b is None:
        if a != b:
            errors.append(f"{what}: {a} vs {b}")
        return
    if not math.isclose(a, b, rel_tol=tol, abs_tol=tol):
        errors.append(f"{what}: distill {a} vs recomputed {b}")


def main():
    d = sys.argv[1]
    m = json.load(open(f"{d}/metrics.json"))
    preds = [json.loads(l) for l in open(f"{d}/predictions.jsonl")]
    held = [p for p in preds if p["split"] == "held_out"]
    items = [(p["passed"], p["cost_usd"]) for p in held]
    n = len(items)
    cheap = sum(p[0] for p, _ in items) / n
    premium = sum(p[1] for p, _ in items) / n
    errors = []
    checked = 0
    for pol in m["policies"]:
        name = pol["name"]
        if pol["kind"] == "router":
            scores = [p["scores"][name][0] for p in held]
            pts = curve(items, scores)
        elif name == "oracle":
            pts = oracle(items)
        else:
            continue
        apgr, c20, c50, c80 = gap(pts, cheap, premium)
        g = pol["gap"]
        close(g["apgr"], apgr, f"{name} APGR", errors)
        for k, v in (("cpt20", c20), ("cpt50", c50), ("cpt80", c80)):
            close(g[k], v, f"{name} {k}", errors)
        checked += 1
        ch = pol.get("chosen")
        if ch and pol["kind"] == "router":
            t = ch["threshold"]
            scores = [p["scores"][name][0] for p in held]
            tiers = [0 if s >= t else 1 for s in scores]
            q = sum(items[i][0][tiers[i]] for i in range(n)) / n
            sh = sum(tiers) / n
            c = sum(items[i][1][tiers[i]] for i in range(n)) / n
            close(ch["held_out"]["quality"], q, f"{name} held-out quality at the threshold", errors)
            close(ch["held_out"]["premium_share"], sh, f"{name} premium share at the threshold", errors)
            close(ch["held_out"]["cost_per_request_usd"], c, f"{name} cost at the threshold", errors)
            prem_cost = sum(x[1][1] for x in items) / n
            close(ch["saving_vs_premium"], 1 - c / prem_cost, f"{name} saving", errors)
        print(f"{name}: APGR {apgr:.4f}, CPT(50%) {c50}, CPT(80%) {c80}")
    if checked < 2:
        errors.append(f"only {checked} policies checked (need a router and the oracle)")
    if errors:
        print("route_metrics: MISMATCH\n  " + "\n  ".join(errors))
        sys.exit(1)
    print(f"route_metrics: {checked} policies, {n} held-out items: every figure matches")


if __name__ == "__main__":
    main()
