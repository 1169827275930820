#!/usr/bin/env bash
# The real `distill serve` binary, driven by the official OpenAI Python client.
#  1. the binary itself: `serve --help` lists the flags; a bad model directory exits 1, clearly;
#  2. a linear student trained on a Banking77 slice, `distill sim-teacher` as the escalation
#     teacher, `distill serve` with an API key file, all on free 127.0.0.1 ports; beside it, in
#     the same server, a linear tagger taught on a Restaurant-8k slice by a second sim-teacher,
#     each model escalating to the teacher its task spec names;
#  3. serve_openai_client.py (with $DISTILL_TEST_PYTHON, else python3, and the `openai` package);
#  4. SIGTERM: the server drains and exits 0.
# Uses target/release/distill or target/debug/distill (the newer), building the debug binary
# if neither exists. Exits non-zero on any mismatch.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
say() { printf 'serve_openai_client: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

py=${DISTILL_TEST_PYTHON:-python3}
"$py" -c 'import openai' 2>/dev/null \
  || fail "the Python \`openai\` package is missing for $py (scripts/test.sh installs it into .venv-test)"

bin=${DISTILL_BIN:-}
if [ -z "$bin" ]; then
  rel=target/release/distill dbg=target/debug/distill
  if [ -x "$rel" ] && { [ ! -x "$dbg" ] || [ "$rel" -nt "$dbg" ]; }; then bin=$rel
  elif [ -x "$dbg" ]; then bin=$dbg
  else
    say "building the debug binary"
    cargo build --quiet -p distill-cli
    bin=$dbg
  fi
fi
case $bin in /*) ;; *) bin=$root/$bin ;; esac
[ -x "$bin" ] || fail "$bin is not an executable"
say "using $bin"

data=$root/datasets/banking77
[ -s "$data/train.csv" ] || data=$root/../shared/datasets/banking77
[ -s "$data/train.csv" ] || fail "no Banking77 data (datasets/banking77 or ../shared/datasets/banking77)"

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
export DISTILL_STATE_DIR=$tmp/state

# Polls until FILE has a line matching REGEX (or DEADLINE seconds pass); prints the match.
wait_line() {
  local file=$1 regex=$2 deadline=$((SECONDS + $3)) pid=$4
  while :; do
    if grep -m1 -oE "$regex" "$file" 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { cat "$file" >&2; fail "process $pid exited early"; }
    [ $SECONDS -lt "$deadline" ] || { cat "$file" >&2; fail "timed out waiting for /$regex/ in $file"; }
    sleep 0.05
  done
}

# --- the binary itself ---------------------------------------------------------------------
help=$("$bin" serve --help)
for flag in --model --task --threshold --escalate-to --teacher-base-url --host --port \
  --api-keys-file --cache --budget --shadow-rate --rate-limit --max-batch --batch-wait-ms --workers; do
  grep -q -- "$flag" <<<"$help" || fail "\`distill serve --help\` does not list $flag"
done
say "ok    serve --help lists the flags"
mkdir -p "$tmp/empty"
set +e
"$bin" serve --model "$tmp/empty" --port 0 2>"$tmp/bad.err"
rc=$?
set -e
[ $rc -eq 1 ] || fail "a bad model directory exited $rc, not 1"
grep -q "distill.json" "$tmp/bad.err" && grep -q -- "--model" "$tmp/bad.err" \
  || { cat "$tmp/bad.err" >&2; fail "unclear message for a bad model directory"; }
say "ok    a bad model directory exits 1: $(head -c 200 "$tmp/bad.err")"

# --- a student, a teacher, a server ------------------------------------------------------------
cat >"$tmp/task.toml" <<EOF
name = "banking77"
kind = "classify"
[input]
path = "$data/train.csv"
text_column = "text"
gold_column = "category"
[labels]
file = "$data/categories.json"
[teacher]
provider = "openai"
model = "gpt-4o"
EOF
# Every 5th row (the file is sorted by intent: all 77 are present); seconds to train.
"$py" - "$data/train.csv" >"$tmp/slice.jsonl" <<'PY'
import csv, json, sys
for i, r in enumerate(csv.DictReader(open(sys.argv[1], newline=""))):
    if i % 5 == 0:
        print(json.dumps({"text": r["text"], "category": r["category"]}))
PY
"$bin" --quiet train --task "$tmp/task.toml" --data "$tmp/slice.jsonl" --student linear \
  --epochs 3 --out "$tmp/b77" >"$tmp/train.out"
say "ok    $(head -n1 "$tmp/train.out")"
# Texts the server has not seen: from the test split.
"$py" - "$data/test.csv" >"$tmp/texts.txt" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
for r in rows[::150][:20]:
    print(" ".join(r["text"].split()))
PY

"$bin" --quiet sim-teacher --task "$tmp/task.toml" --port 0 --latency-ms 0 --error-rate 0 \
  >"$tmp/sim.out" 2>"$tmp/sim.err" &
pids+=($!)
teacher=$(wait_line "$tmp/sim.out" '^http://127\.0\.0\.1:[0-9]+/v1' 30 "${pids[0]}")

# An extraction task: the worked Restaurant-8k spec on every 10th turn, taught by its own sim.
r8k=$root/datasets/restaurant8k
[ -s "$r8k/train.jsonl" ] || fail "no Restaurant-8k data in $r8k (scripts/setup.sh converts it)"
mkdir -p "$tmp/r8k"
cp "$r8k/task.toml" "$tmp/r8k/task.toml"
awk 'NR % 10 == 1' "$r8k/train.jsonl" >"$tmp/r8k/train.jsonl"
awk 'NR % 10 == 1' "$r8k/test.jsonl" >"$tmp/r8k/test.jsonl"
"$bin" --quiet sim-teacher --task "$tmp/r8k/task.toml" --port 0 --latency-ms 0 --error-rate 0 \
  >"$tmp/sim-r8k.out" 2>"$tmp/sim-r8k.err" &
pids+=($!)
r8k_teacher=$(wait_line "$tmp/sim-r8k.out" '^http://127\.0\.0\.1:[0-9]+/v1' 30 "${pids[1]}")
"$bin" --quiet teach --task "$tmp/r8k/task.toml" --base-url "$r8k_teacher" \
  --out "$tmp/r8k/teach.jsonl" --concurrency 32 --rpm 0 --tpm 0 >/dev/null
"$bin" --quiet train --task "$tmp/r8k/task.toml" --data "$tmp/r8k/teach.jsonl" --student linear \
  --out "$tmp/r8k-tagger" >"$tmp/train-r8k.out"
say "ok    $(head -n1 "$tmp/train-r8k.out")"

# The key is generated here and only ever passed by file.
"$py" -c 'import secrets; print("sk-distill-" + secrets.token_hex(16))' >"$tmp/keys.txt"
chmod 600 "$tmp/keys.txt"
# Each task names its own teacher ([teacher] is the Banking77 spec's last table).
echo "base_url = \"$teacher\"" >>"$tmp/task.toml"
sed -i "s|^base_url = .*|base_url = \"$r8k_teacher\"|" "$tmp/r8k/task.toml"
"$bin" serve --model "b77=$tmp/b77" --task "$tmp/task.toml" \
  --model "r8k=$tmp/r8k-tagger" --task "$tmp/r8k/task.toml" \
  --threshold 0.3 --api-keys-file "$tmp/keys.txt" --port 0 2>"$tmp/serve.err" &
serve_pid=$!
pids+=("$serve_pid")
addr=$(wait_line "$tmp/serve.err" 'listening on http://127\.0\.0\.1:[0-9]+' 60 "$serve_pid")
addr=${addr#listening on }
deadline=$((SECONDS + 30))
until curl -sf "$addr/readyz" >/dev/null; do
  [ $SECONDS -lt $deadline ] || fail "$addr/readyz never answered 200"
  sleep 0.05
done
say "ok    serving on $addr, teacher $teacher"

# --- the official client ---------------------------------------------------------------------
"$py" scripts/verify/serve_openai_client.py --base-url "$addr/v1" --model b77 \
  --key-file "$tmp/keys.txt" --labels "$data/categories.json" --texts "$tmp/texts.txt" \
  --spans-model r8k --spans-rows "$tmp/r8k/test.jsonl"

metrics=$(curl -sf "$addr/metrics")
grep -q '^distill_requests_total{model="b77",endpoint="chat"' <<<"$metrics" \
  || fail "/metrics has no chat requests"
grep -q '^distill_http_errors_total{endpoint="/v1/chat/completions",status="401"}' <<<"$metrics" \
  || fail "/metrics did not count the 401"
if grep -q "$(cat "$tmp/keys.txt")" "$tmp/serve.err" "$tmp/sim.err"; then
  fail "the API key appears in a log"
fi

# --- graceful stop -----------------------------------------------------------------------------
kill -TERM "$serve_pid"
set +e
wait "$serve_pid"
rc=$?
set -e
[ $rc -eq 0 ] || { cat "$tmp/serve.err" >&2; fail "serve exited $rc after SIGTERM"; }
say "ok    SIGTERM: drained and exited 0"
say "all checks passed"
