#!/usr/bin/env bash
# `distill serve` under load on this machine's CPUs, with the encoder-head Banking77 student
# (frozen MiniLM + logistic head), the answer cache off (every request runs the model), no
# teacher, and the load generator on loopback. One run measures:
#   - concurrency 1: p50 latency, against ONNX Runtime's in-process single-text encode latency
#     (scripts/bench/peers/onnx_single.py, same thread count) — target within 1.5x;
#   - concurrency 32: requests/s and p99 over 20,000 requests — targets >= 250 req/s, p99 < 150 ms,
#     zero errors;
#   - the server's RSS sampled through the whole run (first / last / max).
# The ratio prints last.
# Usage: scripts/bench/serve.sh [threads=2] [requests=20000]
# Env: OUT (work dir, default /tmp/distill-bench-serve; the trained student is reused from there),
#      MODEL (a student directory to serve instead, e.g. an int8 copy from `distill quantize`),
#      DISTILL_BIN (the binary; default a fresh release build),
#      PYTHON (default .venv/bin/python), WORKERS (default: serve's own choice), MAX_BATCH,
#      BATCH_WAIT_MS (serve's batcher).
# The load generator is wrk (Debian; installed when missing and root), one thread, on loopback: it
# shares the 2 cores with the server, as a co-located client would. The load average at the end is
# printed because other work on the machine skews every number here.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
threads=${1:-2}
requests=${2:-20000}
base=${BASE:-models/base/all-MiniLM-L6-v2}
out=${OUT:-/tmp/distill-bench-serve}
py=${PYTHON:-$root/.venv/bin/python}
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads

data=datasets/banking77
[ -s "$data/train.csv" ] || data=../shared/datasets/banking77
[ -s "$data/train.csv" ] || { echo "no Banking77 data: run scripts/setup.sh" >&2; exit 1; }
[ -f "$base/model.safetensors" ] || { echo "missing $base: run scripts/setup.sh" >&2; exit 1; }
"$py" -c 'import onnxruntime, transformers, torch' 2>/dev/null \
  || { echo "$py lacks onnxruntime/transformers/torch (see scripts/bench/encoder_inference.sh)" >&2; exit 1; }

if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing wrk"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk) >/dev/null
  else
    echo "wrk is missing (apt-get install wrk)" >&2; exit 1
  fi
fi

source scripts/bench/lib.sh
bin=$(distill_bin)
mkdir -p "$out"
export DISTILL_STATE_DIR=$out/state

# The task spec with absolute data paths, so it works wherever the data lives.
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
model=${MODEL:-$out/b77-encoder-head}
if [ ! -f "$model/distill.json" ]; then
  say "training the encoder-head student on $data/train.csv"
  "$bin" --quiet train --task "$out/task.toml" --data "$data/train.csv" --student encoder-head \
    --base "$base" --threads "$threads" --device cpu --out "$model"
fi

# Request bodies: the Banking77 test texts as chat completions, one JSON per line.
"$py" - "$data/test.csv" >"$out/bodies.jsonl" <<'PY'
import csv, json, sys
for r in csv.DictReader(open(sys.argv[1], newline="")):
    print(json.dumps({"model": "b77", "messages": [{"role": "user", "content": r["text"]}]}))
PY
export WRK_BODIES=$out/bodies.jsonl

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

say "starting distill serve"
"$bin" serve --model "b77=$model" --port 0 --cache off --device cpu \
  ${WORKERS:+--workers "$WORKERS"} --max-batch "${MAX_BATCH:-32}" --batch-wait-ms "${BATCH_WAIT_MS:-0}" \
  2>"$out/serve.err" &
serve_pid=$!
pids+=("$serve_pid")
deadline=$((SECONDS + 120))
until addr=$(grep -m1 -oE 'http://127\.0\.0\.1:[0-9]+' "$out/serve.err"); do
  kill -0 "$serve_pid" 2>/dev/null || { cat "$out/serve.err" >&2; exit 1; }
  [ $SECONDS -lt $deadline ] || { echo "serve did not start" >&2; exit 1; }
  sleep 0.1
done
until curl -sf "$addr/readyz" >/dev/null; do sleep 0.05; done

# RSS of the server, sampled every 0.25 s for the whole run.
rss_log=$out/rss.txt
: >"$rss_log"
(while kill -0 "$serve_pid" 2>/dev/null; do
  awk '/^VmRSS/ {print $2}' "/proc/$serve_pid/status" 2>/dev/null >>"$rss_log" || true
  sleep 0.25
done) &
pids+=($!)

load() { # connections seconds
  wrk -t1 -c"$1" -d"$2"s --timeout 10s -s scripts/bench/wrk/post_bodies.lua "$addr" | tail -n 1
}
say "warm-up"
load 4 5 >/dev/null
say "ONNX Runtime single-text encode ($threads threads)"
onnx=$("$py" scripts/bench/peers/onnx_single.py --model "$base" --data "$data/test.csv" \
  --onnx "$root/.distill/bench/minilm.onnx" --n 1000 --threads "$threads" | tail -n 1)
say "concurrency 1"
c1=$(load 1 20)
# wrk runs for a duration: a 10 s probe sizes the main run to at least $requests requests.
probe=$(load 32 10)
secs=$("$py" -c 'import json,sys; r=json.loads(sys.argv[1]); print(int(int(sys.argv[2]) / max(r["rps"], 1) * 1.1) + 2)' "$probe" "$requests")
say "concurrency 32, ${secs} s (>= $requests requests at the probe's $(grep -oE '"rps":[0-9.]+' <<<"$probe") )"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$serve_pid/stat"; }
batches_before=$(curl -sf "$addr/metrics" | grep -E '^distill_batch_size_(sum|count)' || true)
rss_mark=$(wc -l <"$rss_log")
t0=$(cpu_ticks)
c32=$(load 32 "$secs")
cpu_s=$(( ($(cpu_ticks) - t0) ))
cpu_s=$("$py" -c "import os,sys; print(int(sys.argv[1]) / os.sysconf('SC_CLK_TCK'))" "$cpu_s")
kill "${pids[-1]}" 2>/dev/null || true
batches=$(curl -sf "$addr/metrics" | grep -E '^distill_batch_size_(sum|count)' || true)

load_avg=$(cut -d' ' -f1-3 /proc/loadavg)
"$py" - "$onnx" "$c1" "$c32" "$rss_log" "$requests" "$batches" "$load_avg" "$(nproc)" \
  "$rss_mark" "$cpu_s" "$threads" "$batches_before" <<'PY'
import json, sys
print(f"machine: {sys.argv[8]} CPUs, load average {sys.argv[7]} at the end (the bench itself adds ~2-3)")
onnx, c1, c32 = (json.loads(a) for a in sys.argv[1:4])
rss = [int(l) / 1024 for l in open(sys.argv[4]) if l.strip()]
want = int(sys.argv[5])
def batch_totals(text):
    b = dict(l.split()[:2] for l in text.splitlines() if l.strip())
    total = lambda name: float(next((v for k, v in b.items() if k.startswith(name)), 0))
    return total("distill_batch_size_sum"), total("distill_batch_size_count")
# Only the c=32 run: the counters before it include the c=1 run's batches of one.
(s1, c1n), (s0, c0n) = batch_totals(sys.argv[6]), batch_totals(sys.argv[12])
bsum, bcnt = s1 - s0, c1n - c0n
ok = lambda c: "PASS" if c else "MISS"
print(f"onnxruntime single-text encode: p50 {onnx['p50_ms']:.2f} ms  p99 {onnx['p99_ms']:.2f} ms "
      f"(threads={onnx['threads']}, ort {onnx['ort']})")
print(f"serve c=1:  {c1['requests']} req in {c1['duration_s']:.1f} s, p50 {c1['p50_ms']:.2f} ms, "
      f"p99 {c1['p99_ms']:.2f} ms, errors {c1['errors']}")
print(f"serve c=32: {c32['requests']} req in {c32['duration_s']:.1f} s = {c32['rps']:.0f} req/s "
      f"[{ok(c32['rps'] >= 250)} >= 250], p50 {c32['p50_ms']:.1f} ms, p99 {c32['p99_ms']:.1f} ms "
      f"[{ok(c32['p99_ms'] < 150)} < 150], max {c32['max_ms']:.0f} ms")
print(f"errors: {c1['errors'] + c32['errors']} over {c1['requests'] + c32['requests']} requests "
      f"[{ok(c1['errors'] + c32['errors'] == 0 and c32['requests'] >= want)} zero, >= {want} at c=32]")
print(f"mean batch size at c=32: {bsum / max(bcnt, 1):.1f} over {bcnt:.0f} forward passes")
cpu_s, cores = float(sys.argv[10]), int(sys.argv[11])
per = cpu_s * 1e3 / max(c32["requests"], 1)
print(f"server CPU at c=32: {cpu_s:.1f} CPU-s for {c32['requests']} requests = {per:.2f} CPU-ms/request "
      f"-> {cores * 1e3 / per:.0f} req/s if the server had its {cores} cores to itself "
      f"(it got {cpu_s / c32['duration_s']:.2f} cores)")
if rss:
    mark = min(int(sys.argv[9]), len(rss) - 1)
    steady = rss[mark:]
    print(f"RSS MiB: first {rss[0]:.1f}, last {rss[-1]:.1f}, max {max(rss):.1f} over {len(rss)} samples; "
          f"during c=32: first {steady[0]:.1f}, last {steady[-1]:.1f}, max {max(steady):.1f}")
r = c1["p50_ms"] / onnx["p50_ms"]
print(f"ratio serve p50 (c=1, HTTP + encoder + head) / onnxruntime single encode p50 = {r:.2f}x "
      f"[{ok(r <= 1.5)} <= 1.5x]")
PY
