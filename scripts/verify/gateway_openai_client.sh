#!/usr/bin/env bash
# The real `distill gateway` binary, driven by the official OpenAI Python client.
#  1. `distill gateway init --upstream URL` writes the starter config; a bad config exits 1
#     naming the file and field;
#  2. `distill sim-teacher` as both tiers' upstream, `distill gateway` with an API key file, on
#     free 127.0.0.1 ports;
#  3. a linear router trained on RouteLLM's MMLU outcomes (five subjects) and its eval's
#     threshold, as a `router` route;
#  4. gateway_openai_client.py (with $DISTILL_TEST_PYTHON, else python3, and the `openai`
#     package): plain, streamed, cached, rules-routed, router-routed, capped and failing requests,
#     and an Anthropic tier (the sim's Messages endpoint) whole, streamed and capped;
#  5. `distill spend --by route,tier` shows the metered calls; SIGTERM drains and exits 0.
# Uses target/release/distill or target/debug/distill (the newer), building the debug binary
# if neither exists. Exits non-zero on any mismatch.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
say() { printf 'gateway_openai_client: %s\n' "$*" >&2; }
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

wait_line() {
  local file=$1 regex=$2 deadline=$((SECONDS + $3)) pid=$4
  while :; do
    if grep -m1 -oE "$regex" "$file" 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { cat "$file" >&2; fail "process $pid exited early"; }
    [ $SECONDS -lt "$deadline" ] || { cat "$file" >&2; fail "timed out waiting for /$regex/ in $file"; }
    sleep 0.05
  done
}

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
"$bin" --quiet sim-teacher --task "$tmp/task.toml" --port 0 --latency-ms 0 --error-rate 0 \
  >"$tmp/sim.out" 2>"$tmp/sim.err" &
pids+=($!)
upstream=$(wait_line "$tmp/sim.out" '^http://127\.0\.0\.1:[0-9]+/v1' 30 "${pids[0]}")

# --- the config ---------------------------------------------------------------------------------
"$bin" gateway init --upstream "$upstream" >"$tmp/gateway.toml"
grep -q "base_url = \"$upstream\"" "$tmp/gateway.toml" || fail "init did not use --upstream"
sed 's/^tier = "cheap"$/tier = "gold"/' "$tmp/gateway.toml" >"$tmp/bad.toml"
set +e
"$bin" gateway --config "$tmp/bad.toml" --port 0 2>"$tmp/bad.err"
rc=$?
set -e
[ $rc -eq 1 ] || fail "a bad config exited $rc, not 1"
grep -q "bad.toml" "$tmp/bad.err" && grep -q "route\[0\].tier" "$tmp/bad.err" \
  || { cat "$tmp/bad.err" >&2; fail "unclear message for a bad config"; }
say "ok    a bad config exits 1: $(head -c 200 "$tmp/bad.err")"

# A router (linear, trained in seconds on RouteLLM's MMLU outcomes for five subjects) and its
# eval, whose chosen threshold (85% of GPT-4's quality: five subjects are too few for 95%) the
# router route reads from metrics.json.
rl=$root/../shared/datasets/routellm/mmlu
cp datasets/mmlu-routing/task.toml "$tmp/mmlu.toml"
subjects=()
for s in marketing formal_logic college_computer_science world_religions conceptual_physics; do
  subjects+=("$rl/responses/mmlu_$s.csv")
done
(cd "$tmp" && "$bin" -q teach --task mmlu.toml --import-outcomes "${subjects[@]}" \
  --exclude "$rl/contaminated_prompts.jsonl" --out routes.jsonl --split 0.5 >/dev/null \
  && "$bin" -q train --task mmlu.toml --data routes.train.jsonl --out router >/dev/null \
  && "$bin" -q eval --task mmlu.toml --model router --test routes.test.jsonl \
       --train routes.train.jsonl --quality-floor 0.85 --out router-eval >/dev/null) \
  || fail "could not train and evaluate the router"
cat >>"$tmp/gateway.toml" <<TOML

[[tier]]
name = "claude"
provider = "anthropic"
model = "claude-sonnet-4-5"
base_url = "$upstream"

[[route]]
name = "claude"
models = ["claude"]
policy = "fixed"
tier = "claude"

[[route]]
name = "mmlu"
models = ["mmlu-auto"]
policy = "router"
router = "router"
threshold = "router-eval/metrics.json"
router_tiers = ["cheap", "premium"]
tier = "cheap"
TOML
"$py" - "$tmp/routes.test.jsonl" >"$tmp/mmlu-prompts.txt" <<'PY'
import json, sys
for i, l in enumerate(open(sys.argv[1])):
    if i % 10 == 0:
        print(json.dumps(json.loads(l)["text"]))
PY
say "ok    router trained; threshold $("$py" -c "import json,sys; m=json.load(open(sys.argv[1])); print([(p['chosen'] or {}).get('threshold') for p in m['policies'] if p['kind']=='router'][0])" "$tmp/router-eval/metrics.json")"

"$py" -c 'import secrets; print("sk-distill-" + secrets.token_hex(16))' >"$tmp/keys.txt"
chmod 600 "$tmp/keys.txt"
"$bin" gateway --config "$tmp/gateway.toml" --api-keys-file "$tmp/keys.txt" --port 0 \
  2>"$tmp/gateway.err" &
gw_pid=$!
pids+=("$gw_pid")
addr=$(wait_line "$tmp/gateway.err" 'listening on http://127\.0\.0\.1:[0-9]+' 60 "$gw_pid")
addr=${addr#listening on }
say "ok    gateway on $addr, upstream $upstream"

"$py" scripts/verify/gateway_openai_client.py --base-url "$addr/v1" --key-file "$tmp/keys.txt" \
  --router-prompts "$tmp/mmlu-prompts.txt"

spend=$("$bin" spend --by route,tier)
grep -Eq '^auto +gpt-4o-mini' <<<"$spend" && grep -Eq '^auto +gpt-4o ' <<<"$spend" \
  || { echo "$spend" >&2; fail "distill spend --by route,tier lacks the auto route's two tiers"; }
say "ok    distill spend --by route,tier meters both tiers"
metrics=$(curl -sf "$addr/metrics")
grep -q '^distill_gateway_requests_total{route="auto",tier="cheap",tag="default",source="cache"} ' <<<"$metrics" \
  || fail "/metrics has no cache hit for the auto route"
if grep -q "$(cat "$tmp/keys.txt")" "$tmp/gateway.err" "$tmp/sim.err"; then
  fail "the API key appears in a log"
fi

kill -TERM "$gw_pid"
set +e
wait "$gw_pid"
rc=$?
set -e
[ $rc -eq 0 ] || { cat "$tmp/gateway.err" >&2; fail "gateway exited $rc after SIGTERM"; }
say "ok    SIGTERM: drained and exited 0"
say "all checks passed"
