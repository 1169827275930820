#!/usr/bin/env bash
# Benchmark: `distill teach` of 10,000 Banking77 training inputs through the sim-teacher with
# 200 ms latency and 5% injected 429/500 errors, at concurrency 64 (fresh cache and ledger).
# The concurrency bound is 10,000 x 0.2 s / 64 = 31.25 s; the goal is < 40 s. Also checks
# that no input is lost or paid twice (/stats). The bound and the ratio are printed LAST.
#
#   scripts/bench/teach_throughput.sh [N=10000] [CONCURRENCY=64]
source "$(dirname "$0")/teach_common.sh"
n=${1:-10000}
c=${2:-64}
make_task "$DATA/train.csv"
start_sim --latency-ms 200 --error-rate 0.05 --retry-after-ms 100
t0=$(now)
"$BIN" --state-dir "$WORK/state" -q teach --task "$WORK/task.toml" --base-url "$URL" \
  --out "$WORK/teacher.jsonl" --concurrency "$c" --limit "$n" >"$WORK/teach.out"
t1=$(now)
cat "$WORK/teach.out"
check_output "$WORK/teacher.jsonl" "$n"
secs=$(echo "$t1 - $t0" | bc -l)
bound=$(echo "$n * 0.2 / $c" | bc -l)
printf 'distill teach: %d inputs, concurrency %d, 200 ms latency, 5%% errors: %.2f s (%.0f req/s)\n' "$n" "$c" "$secs" "$(echo "$n / $secs" | bc -l)"
printf 'goal: < 40 s\n'
printf 'peer (concurrency bound n*latency/c): %.2f s\n' "$bound"
printf 'ratio bound / distill (1.0 = perfect): %.3f\n' "$(echo "$bound / $secs" | bc -l)"
