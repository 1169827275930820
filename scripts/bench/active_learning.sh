#!/usr/bin/env bash
# Label less: learning curves of random against active selection, same student, same sizes,
# three seeds each, all through the CLI and the sim-teacher (priced as gpt-4o), offline, on
# Banking77 (TASK=banking77, the default) or MixSNIPS multilabel intents (TASK=mixsnips):
#   random:       `distill eval --curve SIZES,all --curve-order random --curve-seeds 3` over the
#                 fully labelled training set (each seed a different random sample);
#   uncertainty:  three `distill teach --strategy uncertainty --select-seed S` runs to the largest
#   (and diverse) size, each drawn with `eval --curve SIZES --curve-order recorded`;
# then, per strategy, the smallest size whose cascade is sufficient (held-out accuracy averaged over
# the seeds meets the floor, escalating at most 2 points more than the full-data cascade) and its
# labelling spend; the ratio active / random spend is printed last (target <= 0.40).
# Usage: TASK=mixsnips STRATEGIES="uncertainty diverse" STUDENT=linear scripts/bench/active_learning.sh [threads=2]
#   STUDENT scores the pool between rounds; CURVE_STUDENT (default STUDENT) is the student the curves
#   train, e.g. STUDENT=linear CURVE_STUDENT=encoder-head SIZES=1000,2000,4000,6000.
#   ROUND_SIZE (default 250) is the inputs per active round after the random seed round.
#   RANDOM_SIZES adds random-curve sizes past SIZES' largest (the active runs label up to that),
#   so random's first sufficient size is not rounded up to `all` when it lies between.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
threads=${1:-2}
student=${STUDENT:-linear}
curve_student=${CURVE_STUDENT:-$student}
strategies=${STRATEGIES:-uncertainty}
sizes=${SIZES:-500,1000,2000,4000}
round=${ROUND_SIZE:-250}
task=${TASK:-banking77}
case $task in
  banking77) train=train.csv test=test.csv labels=categories.json ;;
  mixsnips) train=train.jsonl test=test.jsonl labels=intents.json ;;
  *) echo "TASK must be banking77 or mixsnips, got $task" >&2; exit 2 ;;
esac
data=$root/datasets/$task
[ -s "$data/$train" ] || data=$root/../shared/datasets/$task
. scripts/bench/lib.sh
bin=$(distill_bin)
base=${BASE:-$root/models/base/all-MiniLM-L6-v2}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
cd "$work"
echo "work dir: $work" >&2
cp "$data/$train" "$data/$test" "$data/$labels" .
sed -e '/^base_url/d' "$root/datasets/$task/task.toml" >task.toml
export DISTILL_STATE_DIR=$work/state RAYON_NUM_THREADS=$threads
"$bin" -q sim-teacher --task task.toml --port 0 --latency-ms 0 --error-rate 0 >sim.url 2>/dev/null &
sim=$!
trap 'kill $sim 2>/dev/null || true' EXIT
for _ in $(seq 200); do [ -s sim.url ] && break; sleep 0.05; done
url=$(head -n1 sim.url)
teach() { "$bin" -q teach --task task.toml --base-url "$url" --concurrency 64 --rpm 0 --tpm 0 "$@" | tail -n 2 >&2; }
[ -s teacher.jsonl ] || teach --input "$train" --out teacher.jsonl
[ -s teacher-test.jsonl ] || teach --input "$test" --out teacher-test.jsonl
largest=${sizes##*,}
curve() { "$bin" -q eval --task task.toml --test "$test" --teacher-labels teacher-test.jsonl \
  --curve-student "$curve_student" --base "$base" --threads "$threads" --force "$@" >/dev/null; }

start=$(date +%s)
curve --train teacher.jsonl --curve "$sizes${RANDOM_SIZES:+,$RANDOM_SIZES},all" --curve-order random --curve-seeds 3 --out eval-random
echo "random curve: $(( $(date +%s) - start )) s" >&2
for strategy in $strategies; do
  for seed in 0 1 2; do
    start=$(date +%s)
    [ -s "$strategy-$seed.jsonl" ] || teach --input "$train" --out "$strategy-$seed.jsonl" --strategy "$strategy" \
      --select-seed "$seed" --limit "$largest" --round-size "$round" --select-student "$student" --base "$base" \
      --threads "$threads"
    curve --train "$strategy-$seed.jsonl" --curve "$sizes" --curve-order recorded --curve-seeds 1 \
      --out "eval-$strategy-$seed"
    echo "$strategy seed $seed: labelled and drawn in $(( $(date +%s) - start )) s" >&2
  done
done

python3 - "$strategies" "$curve_student" <<'PY'
import json, statistics, sys
strategies, student = sys.argv[1].split(), sys.argv[2]
rnd = json.load(open("eval-random/metrics.json"))["curve"]
floor = rnd["floor"]
full = rnd["rows"][-1]
full_esc = full["escalated"]["mean"]
def fmt(xs):
    m = statistics.mean(xs)
    return f"{m:.1%} [{min(xs):.1%}–{max(xs):.1%}]"
def table(name, rows):
    # rows: n -> list of point dicts (one per seed)
    print(f"\n{name} ({student}, {len(next(iter(rows.values())))} seeds): labels, labelling $, student accuracy, "
          f"cascade accuracy, escalated, sufficient")
    first = None
    for n in sorted(rows):
        ps = rows[n]
        q = [p["student_quality"] for p in ps]; c = [p["cascade_quality"] for p in ps]
        e = [p["escalated"] for p in ps]; usd = statistics.mean(p["labelling_usd"] for p in ps)
        ok = statistics.mean(c) >= floor and statistics.mean(e) <= full_esc + 0.02 + 1e-12
        if ok and first is None:
            first = (n, usd)
        print(f"  {n:>6}  ${usd:7.2f}  {fmt(q)}  {fmt(c)}  {fmt(e)}  {'yes' if ok else 'no'}")
    return first
by = {}
for p in rnd["points"]:
    by.setdefault(p["n_labels"], []).append(p)
print(f"floor (teacher accuracy on the calibration split): {floor:.1%}; full-data cascade escalates {full_esc:.1%}")
r_first = table("random", by)
results = {}
for s in strategies:
    rows = {}
    for seed in (0, 1, 2):
        c = json.load(open(f"eval-{s}-{seed}/metrics.json"))["curve"]
        for p in c["points"]:
            rows.setdefault(p["n_labels"], []).append(p)
    rows[full["n_labels"]] = by[full["n_labels"]]  # every strategy ends at the same full set
    results[s] = table(s, rows)
print(f"\nrandom first sufficient at {r_first[0]} labels (${r_first[1]:.2f})" if r_first else "\nrandom: no size sufficient")
for s, first in results.items():
    if first and r_first:
        print(f"{s} first sufficient at {first[0]} labels (${first[1]:.2f}); spend ratio {s}/random "
              f"{first[1] / r_first[1]:.2f} (target <= 0.40: {'PASS' if first[1] / r_first[1] <= 0.40 else 'MISS'})")
    else:
        print(f"{s}: first sufficient {first}; random {r_first}")
PY
