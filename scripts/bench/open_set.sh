#!/usr/bin/env bash
# Out-of-scope traffic on Banking77: MixSNIPS utterances (another domain) are the requests that
# fit no intent. The loop a user runs, offline:
#   1. the sim-teacher with the open-set spec (labels.out_of_scope = "none"): Banking77 is its
#      gold; texts it has no gold for it calls `none` at its 94% accuracy;
#   2. teach: Banking77 train and test, 2,000 MixSNIPS *train* utterances (out-of-scope examples
#      for training), the 2,199 MixSNIPS *test* utterances (out-of-scope test traffic);
#   3. train each student kind twice on the teacher's labels: closed-set (today: Banking77 only,
#      no `none`) and open-set (plus the teacher-labelled out-of-scope examples);
#   4. eval all of them on Banking77 test + MixSNIPS test at a 10% out-of-scope share.
# Prints the out-of-scope table and, per kind, PASS/MISS for the bar: out-of-scope recall >= 0.90
# at <= 1 point of in-scope accuracy lost against the closed-set student of the same kind.
# Usage: STUDENTS="linear encoder-head encoder-finetune" scripts/bench/open_set.sh [threads=2]
# (encoder-finetune takes ~30 min per model on 2 cores; the default runs linear and encoder-head).
# Elsewhere (scripts/gpu/students-check.sh on a lent GPU): DISTILL_BIN (a built binary; no cargo),
# DEVICE (cpu|cuda, for training and eval), DATASETS (the shared data sets' folder), BASE (the encoder).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
threads=${1:-2}
students=${STUDENTS:-linear encoder-head}
share=${OOS_SHARE:-0.1}
device=${DEVICE:-cpu}
shared=${DATASETS:-$root/../shared/datasets}
base=${BASE:-$root/models/base/all-MiniLM-L6-v2}
data=$root/datasets/banking77
[ -s "$data/train.csv" ] || data=$shared/banking77
snips=$shared/mixsnips
export RAYON_NUM_THREADS=$threads
. scripts/bench/lib.sh
bin=$(distill_bin)
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
cd "$work"
echo "work dir: $work" >&2

cp "$data/train.csv" "$data/test.csv" "$data/categories.json" .
sed -e '/^base_url/d' "$root/datasets/banking77/task.toml" >closed.toml
sed -e 's/^\[labels\]$/[labels]\nout_of_scope = "none"/' closed.toml >open.toml
python3 - "$snips" <<'PY'
import json, sys
src = sys.argv[1]
def texts(name, n=None):
    rows = [json.loads(l)["text"] for l in open(f"{src}/{name}") if l.strip()]
    return rows[:n] if n else rows
for name, rows in (("oos-train.jsonl", texts("train.jsonl", 2000)), ("oos-test.jsonl", texts("test.jsonl"))):
    with open(name, "w") as f:
        for t in rows:
            f.write(json.dumps({"text": t}) + "\n")
PY

"$bin" -q sim-teacher --task open.toml --port 0 --latency-ms 0 --error-rate 0 >sim.url 2>/dev/null &
sim=$!
trap 'kill $sim 2>/dev/null || true' EXIT
for _ in $(seq 200); do [ -s sim.url ] && break; sleep 0.05; done
url=$(head -n1 sim.url)
export DISTILL_STATE_DIR=$work/state
teach() { "$bin" -q teach --task open.toml --input "$1" --out "$2" --base-url "$url" \
  --concurrency 64 --rpm 0 --tpm 0 | tail -n 3 >&2; }
[ -s teacher.jsonl ] || teach train.csv teacher.jsonl
[ -s teacher-test.jsonl ] || teach test.csv teacher-test.jsonl
[ -s teacher-oos-train.jsonl ] || teach oos-train.jsonl teacher-oos-train.jsonl
[ -s teacher-oos-test.jsonl ] || teach oos-test.jsonl teacher-oos-test.jsonl

# On a GPU the students train side by side (one MiniLM fine-tune leaves the card mostly idle);
# on the CPU one at a time, each with all the threads.
models=()
training=()
for kind in $students; do
  for scope in closed open; do
    extra=()
    [ "$scope" = open ] && extra=(--data teacher-oos-train.jsonl)
    out=models/$scope-$kind
    if [ ! -f "$out/distill.json" ]; then
      (
        start=$(date +%s)
        "$bin" -q train --task $scope.toml --data teacher.jsonl "${extra[@]}" --student "$kind" \
          --base "$base" --out "$out" --threads "$threads" --device "$device" | tail -n 2 >&2
        echo "trained $out in $(( $(date +%s) - start )) s" >&2
      ) &
      if [ "$device" = cpu ]; then wait $! || exit 1; else training+=($!); fi
    fi
    models+=(--model "$out")
  done
done
for pid in "${training[@]+"${training[@]}"}"; do wait "$pid" || exit 1; done

"$bin" -q eval --task open.toml "${models[@]}" --test test.csv --teacher-labels teacher-test.jsonl \
  --out-of-scope teacher-oos-test.jsonl --oos-share "$share" --threads "$threads" --device "$device" --out evals --force

python3 - "$students" <<'PY'
import json, sys
m = json.load(open("evals/metrics.json"))
opts = {o["name"]: o for o in m["options"]}
info = m["open_set"]
print(f"\nout-of-scope share {info['share']:.0%} ({info['share_source']}); "
      f"{info['n_out_of_scope']} MixSNIPS test + {info['n_in_scope']} Banking77 test items")
for kind in sys.argv[1].split():
    o, c = opts[f"open-{kind}"]["open_set"], opts[f"closed-{kind}"]["open_set"]
    loss = c["in_scope_accuracy"]["value"] - o["in_scope_accuracy"]["value"]
    rec = o["oos_recall"]["value"]
    co, cc = opts[f"cascade:open-{kind}"], opts[f"cascade:closed-{kind}"]
    print(f"{kind}: out-of-scope recall {rec:.4f} (closed-set {c['oos_recall']['value']:.4f}); "
          f"in-scope accuracy {o['in_scope_accuracy']['value']:.4f} vs closed-set "
          f"{c['in_scope_accuracy']['value']:.4f} (loss {loss * 100:+.2f} points)")
    print(f"  cascade at {info['share']:.0%} out of scope: open-set ${co['open_set']['per_request_at_mix_usd']:.3e}/request "
          f"(accuracy {co['open_set']['accuracy_at_mix']:.4f}, out-of-scope escalated {co['open_set']['oos_escalated']:.1%}), "
          f"closed-set ${cc['open_set']['per_request_at_mix_usd']:.3e}/request (accuracy {cc['open_set']['accuracy_at_mix']:.4f}, "
          f"out-of-scope escalated {cc['open_set']['oos_escalated']:.1%}); "
          f"an out-of-scope request ${co['open_set']['per_oos_request_usd']:.3e} vs ${cc['open_set']['per_oos_request_usd']:.3e}")
    ok = rec >= 0.90 and loss <= 0.01
    print(f"  bar (recall >= 0.90 at <= 1 point in-scope loss): {'PASS' if ok else 'MISS'}")
    print(f"  ratio closed/open cascade cost per request at the mix: "
          f"{cc['open_set']['per_request_at_mix_usd'] / co['open_set']['per_request_at_mix_usd']:.2f}x")
PY
