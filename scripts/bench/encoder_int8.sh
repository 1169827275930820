#!/usr/bin/env bash
# int8 encoder students on the CPU (`distill quantize`) against ONNX Runtime, quantised and not,
# all in one run on the same Banking77 sentences and thread count:
#   accuracy    encoder-head and encoder-finetune students (gold labels) and their int8 copies on
#               the 3,080 test sentences, through `distill eval` (paired Δ with its 95% interval);
#               target: |Δ| ≤ 0.3 points for both kinds;
#   throughput  sentences/s encoding N sentences in length-sorted batches of 64: distill f32 and
#               int8 vs ONNX Runtime fp32 (the exported MiniLM) and int8 (`quantize_dynamic` of that
#               export); targets: ≥ 1.0× ONNX Runtime int8, ≥ 2× ONNX Runtime fp32;
#   latency     p50 ms encoding one sentence at a time, the same four; target: int8 ≤ ONNX Runtime
#               fp32's, reported against ONNX Runtime int8's;
#   serve       scripts/bench/serve.sh with the f32 and the int8 encoder-head student (SERVE=0 skips).
# Every side runs REPEAT times (interleaved) and reports its median; versions and threads print
# first, the ratios last.
# Usage: scripts/bench/encoder_int8.sh [threads=2] [n=2048]
# Env: OUT (work dir, default /tmp/distill-bench-int8; trained students are reused from there),
#      FT_EPOCHS (encoder-finetune epochs, default 2: a parent to compare with, not the best
#      model), REPEAT (default 5), SERVE (default 1), PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
threads=${1:-2}
n=${2:-2048}
base=${BASE:-models/base/all-MiniLM-L6-v2}
out=${OUT:-/tmp/distill-bench-int8}
repeat=${REPEAT:-5}
py=${PYTHON:-$root/.venv/bin/python}
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
source scripts/bench/lib.sh

data=datasets/banking77
[ -s "$data/train.csv" ] || data=../shared/datasets/banking77
[ -s "$data/train.csv" ] || { echo "no Banking77 data: run scripts/setup.sh" >&2; exit 1; }
[ -f "$base/model.safetensors" ] || { echo "missing $base: run scripts/setup.sh" >&2; exit 1; }
if ! "$py" -c 'import torch, onnxruntime, onnx, transformers' 2>/dev/null; then
  [ -x "$py" ] || python3 -m venv "$root/.venv"
  "$root/.venv/bin/pip" install --quiet torch onnxruntime onnx transformers sentence-transformers
  py=$root/.venv/bin/python
fi

bin=$(distill_bin)
cargo build --release --quiet -p distill-train --example encoder_bench
bench=$root/target/release/examples/encoder_bench
mkdir -p "$out"
export DISTILL_STATE_DIR=$out/state
onnx=$root/.distill/bench/minilm.onnx

cat >"$out/task.toml" <<EOF
name = "banking77"
kind = "classify"
[input]
path = "$root/$data/train.csv"
test_path = "$root/$data/test.csv"
text_column = "text"
gold_column = "category"
[labels]
file = "$root/$data/categories.json"
[teacher]
provider = "openai"
model = "gpt-4o"
EOF

# 1. Students (reused when already trained) and their int8 copies.
train() { # kind dir [flags]
  local kind=$1 dir=$2; shift 2
  if [ ! -f "$dir/distill.json" ]; then
    say "training $kind on $data/train.csv (gold labels)"
    "$bin" --quiet train --task "$out/task.toml" --data "$data/train.csv" --student "$kind" \
      --base "$base" --threads "$threads" --device cpu --out "$dir" "$@"
  fi
  "$bin" quantize --model "$dir" --out "$dir-int8" --force | head -n 1
}
train encoder-head "$out/head"
train encoder-finetune "$out/ft" --epochs "${FT_EPOCHS:-2}"

say "distill eval: the four students on $data/test.csv"
"$bin" --quiet eval --task "$out/task.toml" --test "$data/test.csv" --out "$out/eval" --force \
  --model "$out/head" --model "$out/head-int8" --model "$out/ft" --model "$out/ft-int8" >/dev/null

# 2. Throughput and latency, every side REPEAT times, interleaved.
say "ONNX Runtime models (exported once, then quantize_dynamic)"
"$py" scripts/bench/peers/onnx_embed.py latency --model "$base" --data "$data/test.csv" \
  --onnx "$onnx" --n 1 --threads "$threads" --int8 >/dev/null
: >"$out/runs.jsonl"
run() { # label command...
  local label=$1; shift
  echo "+ $label: $*" >&2
  printf '{"side":"%s","result":%s}\n' "$label" "$("$@" | tail -n 1)" >>"$out/runs.jsonl"
}
for i in $(seq "$repeat"); do
  say "round $i/$repeat"
  run distill-f32 "$bench" throughput --model "$base" --data "$data/test.csv" --n "$n" --batch 64 --threads "$threads" --repeat 1
  run distill-int8 "$bench" throughput --model "$out/head-int8" --data "$data/test.csv" --n "$n" --batch 64 --threads "$threads" --repeat 1
  run ort-fp32 "$py" scripts/bench/peers/onnx_embed.py throughput --model "$base" --data "$data/test.csv" --onnx "$onnx" --n "$n" --batch 64 --threads "$threads" --repeat 1
  run ort-int8 "$py" scripts/bench/peers/onnx_embed.py throughput --model "$base" --data "$data/test.csv" --onnx "$onnx" --n "$n" --batch 64 --threads "$threads" --repeat 1 --int8
  run distill-f32-lat "$bench" latency --model "$base" --data "$data/test.csv" --n 300 --threads "$threads"
  run distill-int8-lat "$bench" latency --model "$out/head-int8" --data "$data/test.csv" --n 300 --threads "$threads"
  run ort-fp32-lat "$py" scripts/bench/peers/onnx_embed.py latency --model "$base" --data "$data/test.csv" --onnx "$onnx" --n 300 --threads "$threads"
  run ort-int8-lat "$py" scripts/bench/peers/onnx_embed.py latency --model "$base" --data "$data/test.csv" --onnx "$onnx" --n 300 --threads "$threads" --int8
done

# 3. serve.sh with each encoder-head student.
if [ "${SERVE:-1}" = 1 ]; then
  for variant in f32 int8; do
    say "serve.sh with the $variant encoder-head student"
    model=$out/head; [ "$variant" = int8 ] && model=$out/head-int8
    MODEL=$model OUT=$out/serve-$variant PYTHON=$py DISTILL_BIN=$bin \
      bash scripts/bench/serve.sh "$threads" 20000 >"$out/serve-$variant.txt" 2>"$out/serve-$variant.err" \
      || { cat "$out/serve-$variant.err" >&2; exit 1; }
  done
fi

"$py" - "$out" "$threads" "${SERVE:-1}" <<'PY'
import json, statistics, sys, re, os
out, threads, serve = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
import onnxruntime, platform
runs = {}
for line in open(f"{out}/runs.jsonl"):
    r = json.loads(line)
    runs.setdefault(r["side"], []).append(r["result"])
med = lambda side, key: statistics.median(r[key] for r in runs[side])
ok = lambda c: "PASS" if c else "MISS"
kernel = runs["distill-int8"][0].get("int8_kernel")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"machine: {cpu}, {os.cpu_count()} CPUs; threads={threads} everywhere; distill int8 kernel: {kernel}")
print(f"peer: onnxruntime {onnxruntime.__version__} (CPUExecutionProvider, intra_op_num_threads="
      f"{runs['ort-fp32'][0].get('intra_op_threads')}, inter_op 1, ORT_ENABLE_ALL; int8 = "
      f"quant_pre_process + quantize_dynamic(QInt8)), python {platform.python_version()}")
print(f"repeats per side: {len(runs['distill-f32'])} (median reported)")

m = json.load(open(f"{out}/eval/metrics.json"))
print("\naccuracy vs gold on the Banking77 test set (distill eval, paired bootstrap):")
for q in m.get("quantized", []):
    d = q["delta"]
    pts = lambda x: f"{x * 100:+.2f}"
    print(f"  {q['student']:<10} {q['student_accuracy']:.4f} vs {q['parent']:<5} {q['parent_accuracy']:.4f}: "
          f"Δ {pts(d['value'])} pt [{pts(d['lo'])}, {pts(d['hi'])}], same label {q['same_label']:.4f}, "
          f"eval p50 {q['student_p50_ms']:.2f} vs {q['parent_p50_ms']:.2f} ms "
          f"[{ok(abs(d['value']) <= 0.003)} |Δ| ≤ 0.3 pt]")

tp = {s: med(s, "sentences_per_s") for s in ["distill-f32", "distill-int8", "ort-fp32", "ort-int8"]}
lat = {s: med(s + "-lat", "p50_ms") for s in ["distill-f32", "distill-int8", "ort-fp32", "ort-int8"]}
print(f"\nthroughput (batch 64, n={runs['distill-f32'][0]['n']}), sentences/s:")
for s, v in tp.items():
    each = ", ".join("%.0f" % r["sentences_per_s"] for r in runs[s])
    print(f"  {s:<13} {v:8.1f}   runs {each}")
print("single-text latency p50, ms:")
for s, v in lat.items():
    each = ", ".join("%.2f" % r["p50_ms"] for r in runs[s + "-lat"])
    print(f"  {s:<13} {v:8.3f}   runs {each}")

if serve:
    def serve_figs(v):
        t = open(f"{out}/serve-{v}.txt").read()
        c1 = float(re.search(r"serve c=1: .*?p50 ([0-9.]+) ms", t).group(1))
        c32 = float(re.search(r"= ([0-9.]+) req/s", t).group(1))
        return c1, c32
    (f1, f32), (i1, i32) = serve_figs("f32"), serve_figs("int8")
    print(f"\nserve.sh (encoder-head student, HTTP on loopback): f32 c=1 p50 {f1:.2f} ms, c=32 {f32:.0f} req/s;"
          f" int8 c=1 p50 {i1:.2f} ms, c=32 {i32:.0f} req/s")
    print(f"ratio serve int8/f32: c=32 req/s {i32 / f32:.2f}x, c=1 p50 f32/int8 {f1 / i1:.2f}x")
print()
print(f"ratio throughput distill int8 / onnxruntime int8 = {tp['distill-int8'] / tp['ort-int8']:.2f}x [{ok(tp['distill-int8'] >= tp['ort-int8'])} ≥ 1.0x]")
print(f"ratio throughput distill int8 / onnxruntime fp32 = {tp['distill-int8'] / tp['ort-fp32']:.2f}x [{ok(tp['distill-int8'] >= 2 * tp['ort-fp32'])} ≥ 2x]")
print(f"ratio throughput distill int8 / distill f32 = {tp['distill-int8'] / tp['distill-f32']:.2f}x")
print(f"ratio latency p50 onnxruntime fp32 / distill int8 = {lat['ort-fp32'] / lat['distill-int8']:.2f}x [{ok(lat['distill-int8'] <= lat['ort-fp32'])} ≥ 1x]")
print(f"ratio latency p50 onnxruntime int8 / distill int8 = {lat['ort-int8'] / lat['distill-int8']:.2f}x (>1: distill faster)")
PY
