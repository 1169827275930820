#!/usr/bin/env bash
# Benchmark: requests/s of `distill teach` vs the official Python `openai` client
# (AsyncOpenAI, scripts/bench/peers/openai_async.py) sending the same prompts at the same
# concurrency to the same zero-latency sim-teacher. distill is timed end to end (process
# start, input validation, journal, SQLite cache and ledger, output file); the peer only over
# its request loop (after imports and client setup). Target: ratio >= 3. Ratio printed LAST.
#
#   scripts/bench/teach_vs_openai.sh [N=10000] [CONCURRENCY=64]
source "$(dirname "$0")/teach_common.sh"
n=${1:-10000}
c=${2:-64}
py=${DISTILL_BENCH_PYTHON:-$ROOT/.venv/bin/python}
[ -x "$py" ] || py=python3
"$py" -c 'import openai' 2>/dev/null || { echo "the peer needs the openai package for $py" >&2; exit 1; }
make_task "$DATA/train.csv"
start_sim --latency-ms 0 --error-rate 0

t0=$(now)
"$BIN" --state-dir "$WORK/state" -q teach --task "$WORK/task.toml" --base-url "$URL" \
  --out "$WORK/teacher.jsonl" --concurrency "$c" --limit "$n" >"$WORK/teach.out"
t1=$(now)
check_output "$WORK/teacher.jsonl" "$n"
distill_s=$(echo "$t1 - $t0" | bc -l)
distill_rps=$(echo "$n / $distill_s" | bc -l)

reset_stats
peer=$("$py" scripts/bench/peers/openai_async.py --task "$WORK/task.toml" --input "$DATA/train.csv" \
  --limit "$n" --concurrency "$c" --base-url "$URL")
echo "peer: $peer"
peer_ok=$(jq .ok <<<"$peer")
[ "$peer_ok" -eq "$n" ] || { echo "FAIL: the peer labelled $peer_ok of $n" >&2; exit 1; }
[ "$(stats | jq .billable)" -eq "$n" ] || { echo "FAIL: the peer's billable count differs" >&2; exit 1; }
peer_rps=$(jq .rps <<<"$peer")
printf 'distill teach: %d requests in %.2f s = %.0f req/s (end to end)\n' "$n" "$distill_s" "$distill_rps"
printf 'peer (openai %s AsyncOpenAI, concurrency %d): %.0f req/s (request loop only)\n' "$(jq -r .openai <<<"$peer")" "$c" "$peer_rps"
printf 'ratio distill / openai-python req/s (target >= 3): %.2f\n' "$(echo "$distill_rps / $peer_rps" | bc -l)"
