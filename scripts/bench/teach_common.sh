#!/usr/bin/env bash
# Shared by scripts/bench/teach_*.sh (source it): builds the release binary, makes a work
# dir, writes a Banking77 task over a given input file, and starts/stops
# `target/release/distill sim-teacher` on a free loopback port.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
export CARGO_INCREMENTAL=0
if [ -z "${DISTILL_BENCH_NO_BUILD:-}" ]; then
  cargo build --release -q -p distill-cli
fi
BIN=$ROOT/target/release/distill
if [ -f "$ROOT/../shared/datasets/banking77/train.csv" ]; then
  DATA=$(cd "$ROOT/../shared/datasets/banking77" && pwd)
else
  DATA=$ROOT/datasets/banking77
fi
[ -f "$DATA/train.csv" ] || { echo "no Banking77 data: run scripts/setup.sh" >&2; exit 1; }
WORK=$(mktemp -d /tmp/distill-bench-teach.XXXXXX)
SIM_PID=
cleanup() {
  if [ -n "$SIM_PID" ]; then
    kill -INT "$SIM_PID" 2>/dev/null || true
    wait "$SIM_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# make_task INPUT [GOLD]: writes $WORK/task.toml labelling INPUT (the datasets' task prompt).
make_task() {
  cat >"$WORK/task.toml" <<TOML
name = "banking77-bench"
kind = "classify"
[input]
path = "$1"
format = "csv"
text_column = "text"
gold_column = "category"
[labels]
file = "$DATA/categories.json"
[teacher]
provider = "openai"
model = "gpt-4o"
max_tokens = 24
temperature = 0.0
system_prompt = """You label customer messages sent to an online bank with their intent. \\
Choose exactly one label from the list. Reply with JSON only: {"label": "<label>"}."""
user_template = """Labels:
{labels}
Message: {text}"""
[output]
format = "json_schema"
TOML
}

# start_sim [sim-teacher flags...]: sets URL (…/v1) and ORIGIN.
start_sim() {
  "$BIN" -q sim-teacher --task "$WORK/task.toml" --port 0 "$@" >"$WORK/sim.out" 2>"$WORK/sim.err" &
  SIM_PID=$!
  local deadline=$((SECONDS + 120))
  until [ -s "$WORK/sim.out" ]; do
    if ! kill -0 "$SIM_PID" 2>/dev/null; then cat "$WORK/sim.err" >&2; exit 1; fi
    [ $SECONDS -lt $deadline ] || { echo "sim-teacher did not start" >&2; exit 1; }
    sleep 0.05
  done
  URL=$(head -1 "$WORK/sim.out")
  ORIGIN=${URL%/v1}
}

stop_sim() {
  kill -INT "$SIM_PID" 2>/dev/null || true
  wait "$SIM_PID" 2>/dev/null || true
  SIM_PID=
}

stats() { curl -sf "$ORIGIN/stats"; }
reset_stats() { curl -sf -X POST "$ORIGIN/stats/reset" >/dev/null; }

# check_output FILE N: every input exactly once (ids 1..N in order), nothing paid twice.
check_output() {
  local n_lines ids_ok s
  n_lines=$(wc -l <"$1")
  ids_ok=$(jq -r '.id' "$1" | awk -v n="$2" '{ if ($1 != NR) bad=1 } END { print (bad || NR != n) ? "no" : "yes" }')
  s=$(stats)
  echo "output: $n_lines records, ids 1..$2 each once: $ids_ok; sim: $(jq -c '{billable, unique_billable, duplicates, errors_injected}' <<<"$s")"
  [ "$n_lines" -eq "$2" ] && [ "$ids_ok" = yes ] || { echo "FAIL: inputs lost or repeated" >&2; exit 1; }
  [ "$(jq .duplicates <<<"$s")" -eq 0 ] || { echo "FAIL: something was paid twice" >&2; exit 1; }
  [ "$(jq .billable <<<"$s")" -eq "$2" ] || { echo "FAIL: billable != inputs" >&2; exit 1; }
}

now() { date +%s.%N; }
