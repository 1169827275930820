#!/usr/bin/env bash
# What `distill gateway` adds to a request, against LiteLLM's proxy, on loopback.
# One zero-latency upstream (`distill sim-teacher --latency-ms 0`), three ways to reach it, the
# same wrk load on each (Banking77 test sentences as chat requests, cache off everywhere):
#   direct    wrk -> upstream
#   distill   wrk -> distill gateway (a fixed route, cache off) -> upstream
#   litellm   wrk -> litellm --config (one model, the same upstream) -> upstream
# at c=1 and c=64, each side REPEAT times interleaved (median of each percentile). Added latency
# = side - direct, per percentile. Then 100,000 requests at c=64 through distill with its RSS
# sampled: flat means the last sample is within 10% of the first after warm-up.
# Both proxies check a bearer key (LiteLLM's master key, the gateway's --api-keys-file).
# Before each round the script waits for the machine to go idle (under 10% busy), whichever side.
# Targets: distill adds at most 1 ms p99 at c=64, and less than LiteLLM; zero errors.
# wrk, the gateway, LiteLLM and the upstream share this machine's cores (printed).
# Usage: scripts/bench/gateway_overhead.sh [seconds per run=10] [rss requests=100000]
# Env: REPEAT (default 3), PYTHON (with litellm[proxy]; default .venv/bin/python, installed
#      when missing), LITELLM_WORKERS (default: the number of CPUs), OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
secs=${1:-10}
rss_requests=${2:-100000}
repeat=${REPEAT:-3}
out=${OUT:-/tmp/distill-bench-gateway}
py=${PYTHON:-$root/.venv/bin/python}
workers=${LITELLM_WORKERS:-$(nproc)}
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
source scripts/bench/lib.sh

data=datasets/banking77
[ -s "$data/train.csv" ] || data=../shared/datasets/banking77
[ -s "$data/test.csv" ] || { echo "no Banking77 data: run scripts/setup.sh" >&2; exit 1; }
command -v wrk >/dev/null 2>&1 || { echo "wrk is missing (apt-get install wrk)" >&2; exit 1; }
if ! "$py" -c 'import litellm' 2>/dev/null; then
  [ -x "$py" ] || python3 -m venv "$root/.venv"
  say "installing litellm[proxy]"
  "$root/.venv/bin/pip" install --quiet 'litellm[proxy]'
  py=$root/.venv/bin/python
fi
litellm_bin=$(dirname "$py")/litellm
bin=$(distill_bin)
mkdir -p "$out"
export DISTILL_STATE_DIR=$out/state

trap stop_started EXIT

cat >"$out/task.toml" <<EOF
name = "banking77"
kind = "classify"
[input]
path = "$root/$data/train.csv"
text_column = "text"
gold_column = "category"
[labels]
file = "$root/$data/categories.json"
[teacher]
provider = "openai"
model = "gpt-4o"
EOF
"$py" - "$data/test.csv" >"$out/bodies.jsonl" <<'PY'
import csv, json, sys
for r in csv.DictReader(open(sys.argv[1], newline="")):
    print(json.dumps({"model": "auto", "messages": [{"role": "user", "content": r["text"]}]}))
PY
# One key for every side: LiteLLM's master key and the gateway's --api-keys-file (both check a
# bearer key on each request; the sim accepts any).
key=sk-bench-$("$py" -c 'import secrets; print(secrets.token_hex(24))')
printf '%s\n' "$key" >"$out/keys.txt"
chmod 600 "$out/keys.txt"
export WRK_BODIES=$out/bodies.jsonl WRK_AUTH=$key

say "upstream: distill sim-teacher, no latency"
"$bin" -q sim-teacher --task "$out/task.toml" --port 0 --latency-ms 0 --error-rate 0 \
  >"$out/sim.out" 2>"$out/sim.err" &
pids+=($!)
upstream=$(wait_url "$out/sim.out" 'http://127\.0\.0\.1:[0-9]+/v1' "${pids[-1]}")

cat >"$out/gateway.toml" <<EOF
[[tier]]
name = "only"
provider = "openai"
model = "gpt-4o-mini"
base_url = "$upstream"
max_retries = 0

[[route]]
name = "auto"
models = ["auto"]
policy = "fixed"
tier = "only"
cache = false
EOF
say "distill gateway"
"$bin" gateway --config "$out/gateway.toml" --cache off --api-keys-file "$out/keys.txt" --port 0 \
  2>"$out/gateway.err" &
gw_pid=$!
pids+=("$gw_pid")
gateway=$(wait_url "$out/gateway.err" 'http://127\.0\.0\.1:[0-9]+' "$gw_pid")

cat >"$out/litellm.yaml" <<EOF
model_list:
  - model_name: auto
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: $upstream
      api_key: sk-upstream-local
litellm_settings:
  telemetry: false
  drop_params: true
general_settings:
  master_key: $key
EOF
lport=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
say "litellm proxy ($workers workers)"
LITELLM_LOG=ERROR "$litellm_bin" --config "$out/litellm.yaml" --host 127.0.0.1 --port "$lport" \
  --num_workers "$workers" >"$out/litellm.log" 2>&1 &
ll_pid=$!
pids+=("$ll_pid")
deadline=$((SECONDS + 180))
until curl -sf -o /dev/null -X POST "http://127.0.0.1:$lport/v1/chat/completions" \
  -H 'content-type: application/json' -H "authorization: Bearer $key" \
  -d '{"model":"auto","messages":[{"role":"user","content":"hi"}]}'; do
  kill -0 "$ll_pid" 2>/dev/null || { tail -n 30 "$out/litellm.log" >&2; echo "litellm exited" >&2; exit 1; }
  [ $SECONDS -lt $deadline ] || { tail -n 30 "$out/litellm.log" >&2; echo "litellm never answered" >&2; exit 1; }
  sleep 0.5
done
litellm_url=http://127.0.0.1:$lport

# Before every round, whichever side: wait (up to 30 s) for the machine to go idle, so one
# side's leftovers (LiteLLM's background tasks after a load, a checkpoint) never land on the next.
quiet() {
  local deadline=$((SECONDS + 30)) a b
  while [ $SECONDS -lt $deadline ]; do
    a=($(head -1 /proc/stat)); sleep 0.5; b=($(head -1 /proc/stat))
    local busy=$(( (b[1]+b[2]+b[3]+b[6]+b[7]) - (a[1]+a[2]+a[3]+a[6]+a[7]) ))
    local idle=$(( (b[4]+b[5]) - (a[4]+a[5]) ))
    [ $((busy * 100)) -lt $(( (busy + idle) * 10 )) ] && return 0
  done
  say "the machine did not go idle (<10% busy) in 30 s; running anyway"
}
load() { # url connections seconds
  wrk -t1 -c"$2" -d"$3"s --timeout 10s -s scripts/bench/wrk/post_bodies.lua "$1" | tail -n 1
}
# The sim's own URL ends in /v1: wrk takes the host, the script the path.
direct=${upstream%/v1}
say "warm-up"
for u in "$direct" "$gateway" "$litellm_url"; do load "$u" 8 3 >/dev/null; done
: >"$out/runs.jsonl"
for i in $(seq "$repeat"); do
  for c in 1 64; do
    for side in direct distill litellm; do
      case $side in direct) u=$direct ;; distill) u=$gateway ;; litellm) u=$litellm_url ;; esac
      quiet
      say "round $i/$repeat: $side c=$c"
      printf '{"side":"%s","c":%d,"result":%s}\n' "$side" "$c" "$(load "$u" "$c" "$secs")" >>"$out/runs.jsonl"
    done
  done
done

quiet
say "distill gateway: $rss_requests requests at c=64, RSS sampled"
probe=$(grep '"side":"distill","c":64' "$out/runs.jsonl" | tail -n 1)
rss_secs=$("$py" -c 'import json,sys; r=json.loads(sys.argv[1])["result"]; print(int(int(sys.argv[2]) / max(r["rps"], 1) * 1.1) + 2)' "$probe" "$rss_requests")
: >"$out/rss.txt"
(while kill -0 "$gw_pid" 2>/dev/null; do
  awk '/^VmRSS/ {print $2}' "/proc/$gw_pid/status" 2>/dev/null >>"$out/rss.txt" || true
  sleep 0.25
done) &
pids+=($!)
long=$(load "$gateway" 64 "$rss_secs")
kill "${pids[-1]}" 2>/dev/null || true
metrics=$(curl -sf "$gateway/metrics")

"$py" - "$out" "$long" "$rss_requests" "$workers" "$metrics" <<'PY'
import json, os, platform, statistics, subprocess, sys
out, long, want, workers, metrics = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
import litellm  # noqa: the version printed is the one that ran
try:
    from importlib.metadata import version
    ll = version("litellm")
except Exception:
    ll = "?"
wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
wrk_v = (wrk.stdout or wrk.stderr).split("\n")[0]
runs = {}
for line in open(f"{out}/runs.jsonl"):
    r = json.loads(line)
    runs.setdefault((r["side"], r["c"]), []).append(r["result"])
med = lambda side, c, k: statistics.median(r[k] for r in runs[(side, c)])
ok = lambda b: "PASS" if b else "MISS"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"machine: {cpu}, {os.cpu_count()} CPUs shared by wrk (1 thread), the upstream, distill and LiteLLM")
print(f"peer: litellm {ll} proxy, {workers} uvicorn workers, python {platform.python_version()}; {wrk_v}")
print(f"upstream: distill sim-teacher, no latency; cache off on every side; {len(runs[('direct', 1)])} runs per side and concurrency (median)")
errors = sum(r["errors"] for v in runs.values() for r in v) + long["errors"]
print()
print(f"{'':10} {'c':>3} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8}")
for c in (1, 64):
    for side in ("direct", "distill", "litellm"):
        p50, p99, rps = med(side, c, "p50_ms"), med(side, c, "p99_ms"), med(side, c, "rps")
        d50, d99 = p50 - med("direct", c, "p50_ms"), p99 - med("direct", c, "p99_ms")
        added = "" if side == "direct" else f"{d50:8.3f} {d99:8.3f}"
        print(f"{side:10} {c:>3} {rps:9.0f} {p50:8.3f} {p99:8.3f} {added}")
rss = [int(l) / 1024 for l in open(f"{out}/rss.txt") if l.strip()]
skip = min(8, len(rss) // 4)  # the first 2 s: allocator and connection pool warm-up
steady = rss[skip:] or rss
flat = steady and steady[-1] <= steady[0] * 1.10
print()
print(f"distill, {long['requests']} requests at c=64 in {long['duration_s']:.1f} s: {long['rps']:.0f} req/s, "
      f"p99 {long['p99_ms']:.2f} ms, errors {long['errors']}")
print(f"distill RSS MiB over that run: first {rss[0]:.1f}, after warm-up {steady[0]:.1f}, last {steady[-1]:.1f}, "
      f"max {max(rss):.1f} [{ok(flat)} flat within 10%]")
upstream_err = sum(float(l.split()[-1]) for l in metrics.splitlines() if l.startswith("distill_gateway_upstream_errors_total"))
print(f"errors: {errors} over every run, upstream errors counted by the gateway {upstream_err:.0f} "
      f"[{ok(errors == 0 and long['requests'] >= want)} zero, >= {want} requests]")
d99 = med("distill", 64, "p99_ms") - med("direct", 64, "p99_ms")
l99 = med("litellm", 64, "p99_ms") - med("direct", 64, "p99_ms")
d50 = med("distill", 1, "p50_ms") - med("direct", 1, "p50_ms")
l50 = med("litellm", 1, "p50_ms") - med("direct", 1, "p50_ms")
print()
print(f"added p99 at c=64: distill {d99:.3f} ms [{ok(d99 <= 1.0)} <= 1 ms], litellm {l99:.3f} ms")
print(f"added p50 at c=1: distill {d50:.3f} ms, litellm {l50:.3f} ms")
print(f"ratio added p99 at c=64 litellm / distill = {l99 / d99 if d99 > 0 else float('inf'):.1f}x "
      f"[{ok(d99 < l99)} distill adds less]")
PY
