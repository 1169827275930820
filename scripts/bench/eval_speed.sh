#!/usr/bin/env bash
# Benchmark: `distill eval` of two students on the full Banking77 test set (3,080 sentences),
# including the timed batched pass and single-request latency sampling, on 2 threads.
# Goal (issue 4): under 60 s on 2 cores.
#
#   scripts/bench/eval_speed.sh MODEL_DIR_A MODEL_DIR_B [TEACHER_LABELS.jsonl]
#
# Peer, measured in the same run: scikit-learn recomputing accuracy, both F1s and the
# confusion matrices from the eval's predictions.jsonl (scripts/verify/metrics_vs_sklearn.py),
# i.e. the metric work alone in the reference implementation. Ratios are printed LAST.
set -euo pipefail
cd "$(dirname "$0")/../.."
a=${1:?usage: scripts/bench/eval_speed.sh MODEL_A MODEL_B [TEACHER_LABELS]}
b=${2:?usage: scripts/bench/eval_speed.sh MODEL_A MODEL_B [TEACHER_LABELS]}
teacher=${3:-}
py=${DISTILL_TEST_PYTHON:-python3}
cargo build --release -q -p distill-cli
bin=target/release/distill
out=$(mktemp -d)/eval
extra=()
[ -n "$teacher" ] && extra=(--teacher-labels "$teacher")
start=$(date +%s.%N)
"$bin" --quiet eval --task datasets/banking77/task.toml --model "$a" --model "$b" \
  --threads 2 --out "$out" "${extra[@]}"
end=$(date +%s.%N)
eval_s=$(echo "$end - $start" | bc -l)
n=$(wc -l < "$out/predictions.jsonl")
pstart=$(date +%s.%N)
"$py" scripts/verify/metrics_vs_sklearn.py "$out" >/dev/null
pend=$(date +%s.%N)
peer_s=$(echo "$pend - $pstart" | bc -l)
printf 'items: %s\n' "$n"
printf 'distill eval (2 students, timing included): %.2f s\n' "$eval_s"
printf 'peer: scikit-learn metric recomputation only: %.2f s\n' "$peer_s"
printf 'ratio distill_eval / sklearn_metrics_only: %.2f\n' "$(echo "$eval_s / $peer_s" | bc -l)"
printf 'ratio distill_eval / 60 s budget: %.3f\n' "$(echo "$eval_s / 60" | bc -l)"
