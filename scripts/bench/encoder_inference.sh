#!/usr/bin/env bash
# Frozen-encoder inference on CPU: distill's packed MiniLM forward vs PyTorch
# sentence-transformers and ONNX Runtime, same Banking77 sentences, same thread count, same run.
#   throughput: sentences/s encoding N sentences in batches of 64 (all sides sort by length)
#   latency:    p50 ms embedding one sentence at a time
# Usage: scripts/bench/encoder_inference.sh [threads=2] [n=2048]
# Peers come from the venv .venv (torch, sentence-transformers, onnxruntime, transformers);
# the script installs them there if missing. Ratios (distill / peer, >1 = distill faster) print last.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
threads=${1:-2}
n=${2:-2048}
model=${MODEL:-models/base/all-MiniLM-L6-v2}
data=${DATA:-datasets/banking77/test.csv}
[ -s "$data" ] || data=../shared/datasets/banking77/test.csv
py=${PYTHON:-$root/.venv/bin/python}
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads

[ -f "$model/model.safetensors" ] || { echo "missing $model: run scripts/setup.sh" >&2; exit 1; }
if ! "$py" -c 'import torch, sentence_transformers, onnxruntime, onnx, transformers' 2>/dev/null; then
  [ -x "$py" ] || python3 -m venv "$root/.venv"
  "$root/.venv/bin/pip" install --quiet torch sentence-transformers onnxruntime onnx transformers
  py=$root/.venv/bin/python
fi

cargo build --release --quiet -p distill-train --example encoder_bench
bench=target/release/examples/encoder_bench
onnx=.distill/bench/minilm.onnx

run() { echo "+ $*" >&2; "$@" | tail -n 1; }
# Interleave the sides so a noisy neighbour hurts all of them alike.
d_tp=$(run $bench throughput --model "$model" --data "$data" --n "$n" --batch 64 --threads "$threads")
st_tp=$(run "$py" scripts/bench/peers/st_embed.py throughput --model "$model" --data "$data" --n "$n" --batch 64 --threads "$threads")
ox_tp=$(run "$py" scripts/bench/peers/onnx_embed.py throughput --model "$model" --data "$data" --onnx "$onnx" --n "$n" --batch 64 --threads "$threads")
d_lat=$(run $bench latency --model "$model" --data "$data" --n 300 --threads "$threads")
ox_lat=$(run "$py" scripts/bench/peers/onnx_embed.py latency --model "$model" --data "$data" --onnx "$onnx" --n 300 --threads "$threads")
st_lat=$(run "$py" scripts/bench/peers/st_embed.py latency --model "$model" --data "$data" --n 300 --threads "$threads")

# Every side: one run of three repetitions, its best (the same statistic for all).
"$py" - "$d_tp" "$st_tp" "$ox_tp" "$d_lat" "$st_lat" "$ox_lat" <<'PY'
import json, sys
d1, st, ox, dl, sl, ol = (json.loads(a) for a in sys.argv[1:])
d = d1["sentences_per_s"]
print(f"threads={d1['threads']} batch=64 n={d1['n']}")
print(f"throughput  distill {d:8.1f}/s   sentence-transformers {st['sentences_per_s']:8.1f}/s   onnxruntime {ox['sentences_per_s']:8.1f}/s")
print(f"latency p50 distill {dl['p50_ms']:7.2f} ms  sentence-transformers {sl['p50_ms']:7.2f} ms  onnxruntime {ol['p50_ms']:7.2f} ms")
print(f"ratio throughput distill/sentence-transformers = {d / st['sentences_per_s']:.2f}x")
print(f"ratio throughput distill/onnxruntime = {d / ox['sentences_per_s']:.2f}x")
print(f"ratio latency p50 onnxruntime/distill = {ol['p50_ms'] / dl['p50_ms']:.2f}x (>1: distill faster)")
PY
