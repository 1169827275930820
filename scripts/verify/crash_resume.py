#!/usr/bin/env python3
"""Fault injection for `distill teach`: kill -9 at a random moment, resume, count the damage.

For each path (real time; the Batch API with part of every batch expiring, so its items are
retried in real time; a route task through the Batch API in two rounds, the tiers' answers then
the judge's gradings, on RouteLLM's GSM8K outcomes replayed by the sim; active selection
(`--strategy uncertainty`: 2/3 of the inputs in rounds of 1/6, each picked by a student trained
between rounds) in real time and through the Batch API) this runs the same job RUNS times, each
time:
  1. a fresh sim-teacher (its /stats is the provider's bill) and a fresh state directory;
  2. `distill teach`, killed with SIGKILL at a moment drawn uniformly over a clean run's
     duration (measured first, same settings);
  3. the same command again, to completion;
  4. the same job once more into a second file: every answer must come from the cache.
Then it counts, against the sim's /stats and the ledger:
  lost        inputs without a record in the output;
  duplicated  inputs with more than one record;
  stale       records whose request hash (route: tiers' answers and verdicts) differs from the
              clean rerun's (an answer to another request than the one this job sends);
  paid twice  responses billed for a request already billed: allowed up to the calls in
              flight at the kill (--concurrency), never more;
  under       billed responses the ledger does not count (it must count every one).
Exit 1 when any of these is out of bounds. Prints a table per path.

Usage: crash_resume.py BIN DATA_DIR [--routellm DIR --route-spec TOML] [--runs N] [--inputs N]
                       [--seed S]
"""

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

CONCURRENCY = 8


def write_task(d, data_dir, n):
    rows = []
    with open(os.path.join(data_dir, "train.csv"), newline="") as f:
        for r in csv.DictReader(f):
            rows.append(r)
            if len(rows) == n:
                break
    with open(os.path.join(d, "in.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps({"text": r["text"], "category": r["category"]}) + "\n")
    shutil.copy(os.path.join(data_dir, "categories.json"), os.path.join(d, "categories.json"))
    with open(os.path.join(d, "task.toml"), "w") as f:
        f.write(
            """name = "crash"
kind = "classify"
[input]
path = "in.jsonl"
text_column = "text"
gold_column = "category"
[labels]
file = "categories.json"
[teacher]
provider = "openai"
model = "gpt-4o"
max_tokens = 24
rpm = 0
tpm = 0
"""
        )
    return os.path.join(d, "task.toml")


def write_route_task(binary, d, routellm, spec, n):
    """A route task on the first `n` GSM8K problems: the recorded outcomes for the sim to
    replay, and the prompts to teach."""
    shutil.copy(spec, os.path.join(d, "task.toml"))
    with open(os.path.join(routellm, "gsm8k", "gsm8k_responses.csv"), newline="") as f:
        rows = list(csv.reader(f))[: n + 1]
    with open(os.path.join(d, "outcomes.csv"), "w", newline="") as f:
        csv.writer(f).writerows(rows)
    run_to_end([binary, "--state-dir", os.path.join(d, "import-state"), "-q", "teach",
                "--task", os.path.join(d, "task.toml"), "--import-outcomes",
                os.path.join(d, "outcomes.csv"), "--out", os.path.join(d, "recorded.jsonl")])
    with open(os.path.join(d, "prompts.jsonl"), "w") as f:
        for r in records(os.path.join(d, "recorded.jsonl")):
            f.write(json.dumps({"prompt": r["text"]}) + "\n")
    return os.path.join(d, "task.toml")


class Sim:
    def __init__(self, binary, task, batch, replay=None):
        args = [binary, "-q", "sim-teacher", "--task", task, "--port", "0",
                "--latency-ms", "15", "--error-rate", "0.05", "--retry-after-ms", "5",
                "--batch-completion-ms", "300"]
        if batch:
            args += ["--batch-expire-after", "40"]
        if replay:
            args += ["--replay", replay]
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.url = self.p.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise SystemExit(f"sim-teacher did not start: {self.url!r}")
        self.stats_url = self.url.rsplit("/v1", 1)[0] + "/stats"

    def stats(self):
        with urllib.request.urlopen(self.stats_url, timeout=10) as r:
            return json.load(r)

    def stop(self):
        self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def teach_cmd(binary, state, task, url, out, batch, route=False, active=None):
    c = [binary, "--state-dir", state, "-q", "teach", "--task", task, "--base-url", url,
         "--out", out, "--concurrency", str(CONCURRENCY)]
    if active:
        c += ["--strategy", "uncertainty", "--limit", str(active), "--round-size",
              str(max(1, active // 4)), "--threads", "1"]
    if route:
        c += ["--input", os.path.join(os.path.dirname(task), "prompts.jsonl"), "--rpm", "0",
              "--tpm", "0"]
    if batch:
        c += ["--batch", "--poll-secs", "0.05", "--batch-size", "50"]
    return c


def run_to_end(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return r


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def ledger_calls(binary, state):
    r = run_to_end([binary, "--state-dir", state, "spend", "--by", "task", "--json"])
    rows = json.loads(r.stdout or "[]")
    return sum(x["calls"] for x in rows)


def answer_key(r):
    """What must not change between a resumed run's record and a clean rerun's."""
    if "tiers" in r:
        return json.dumps([(t["answer"], t["passed"]) for t in r["tiers"]])
    return r["request_hash"]


def one_run(binary, data_dir, n, batch, kill_after, work, route=None, active=False):
    d = tempfile.mkdtemp(dir=work)
    if route:
        task = write_route_task(binary, d, route[0], route[1], n)
    else:
        task = write_task(d, data_dir, n)
    state = os.path.join(d, "state")
    out = os.path.join(d, "t.jsonl")
    sim = Sim(binary, task, batch, os.path.join(d, "recorded.jsonl") if route else None)
    # Active selection labels 2/3 of the pool, in four rounds.
    limit = n * 2 // 3 if active else None
    try:
        cmd = teach_cmd(binary, state, task, sim.url, out, batch, bool(route), limit)
        killed = False
        if kill_after is not None:
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                p.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
                killed = True
            if not killed and p.returncode != 0:
                raise SystemExit(f"teach exited {p.returncode} before the kill")
        started = time.monotonic()
        if killed or kill_after is None:
            run_to_end(cmd)
        elapsed = time.monotonic() - started
        recs = records(out)
        ids = [r["id"] for r in recs]
        lost = (limit or n) - len(set(ids))
        duplicated = len(ids) - len(set(ids))
        billed = sim.stats()
        again = os.path.join(d, "again.jsonl")
        # The same job again: every answer (active: every pick, as the same labels train the
        # same scoring students) must come from the cache.
        run_to_end(teach_cmd(binary, state, task, sim.url, again, False, bool(route), limit))
        clean = {r["id"]: answer_key(r) for r in records(again)}
        stale = sum(1 for r in recs if clean.get(r["id"]) != answer_key(r))
        repaid = sim.stats()["billable"] - billed["billable"]
        calls = ledger_calls(binary, state)
        return {
            "killed": killed,
            "lost": lost,
            "duplicated": duplicated,
            "stale": stale + repaid,
            "paid_twice": billed["duplicates"],
            "under": max(0, billed["billable"] - calls),
            "over": max(0, calls - billed["billable"]),
            "elapsed": elapsed,
        }
    finally:
        sim.stop()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("data_dir")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--inputs", type=int, default=150)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--routellm", help="RouteLLM's outcomes (adds the route-batch path)")
    ap.add_argument("--route-spec", help="the GSM8K route task spec")
    ap.add_argument("--route-inputs", type=int, default=40)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="distill-crash-")
    failed = False
    print(f"crash_resume: {a.runs} runs per path, {a.inputs} inputs, concurrency {CONCURRENCY}, "
          f"seed {a.seed}")
    print(f"{'path':<12} {'runs':>4} {'killed':>6} {'lost':>5} {'dup':>4} {'stale':>5} "
          f"{'paid twice (max/run)':>21} {'ledger under':>12} {'ledger over (max)':>17}")
    try:
        paths = [("real-time", False, None, a.inputs, False), ("batch", True, None, a.inputs, False)]
        if a.routellm and a.route_spec:
            paths.append(("route-batch", True, (a.routellm, a.route_spec), a.route_inputs, False))
        paths += [("active", False, None, a.inputs, True), ("active-batch", True, None, a.inputs, True)]
        for name, batch, route, n, active in paths:
            clean = one_run(a.binary, a.data_dir, n, batch, None, work, route, active)
            span = clean["elapsed"]
            totals = {"killed": 0, "lost": 0, "duplicated": 0, "stale": 0, "under": 0}
            max_twice = 0
            max_over = 0
            for _ in range(a.runs):
                r = one_run(a.binary, a.data_dir, n, batch, rng.uniform(0, span), work, route,
                            active)
                for k in totals:
                    totals[k] += int(r[k])
                max_twice = max(max_twice, r["paid_twice"])
                max_over = max(max_over, r["over"])
            bad = (totals["lost"] or totals["duplicated"] or totals["stale"] or totals["under"]
                   or max_twice > CONCURRENCY)
            failed |= bool(bad)
            print(f"{name:<12} {a.runs:>4} {totals['killed']:>6} {totals['lost']:>5} "
                  f"{totals['duplicated']:>4} {totals['stale']:>5} "
                  f"{max_twice:>14} (<= {CONCURRENCY}) {totals['under']:>12} {max_over:>17}"
                  f"   clean run {span:.2f}s {'FAIL' if bad else 'ok'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        print("crash_resume: FAIL: data lost, duplicated or stale, paid twice beyond the calls in "
              "flight, or billed calls missing from the ledger")
        sys.exit(1)
    print("crash_resume: ok")


if __name__ == "__main__":
    main()
