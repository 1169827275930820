#!/usr/bin/env bash
# encoder-finetune training throughput on the CPU: distill vs PyTorch `transformers`, same model
# (all-MiniLM-L6-v2 + a fresh 77-way head), same fixed Banking77 batches (batch 32, max length 64,
# each padded to its longest row), same step (train-mode forward with dropout, cross-entropy,
# backward, clip to norm 1, AdamW without decay on biases/LayerNorm), same thread count.
# WARMUP untimed steps, then STEPS timed ones; peak RSS from /usr/bin/time -v.
# Usage: scripts/bench/finetune.sh [threads=2]   Env: STEPS (20) WARMUP (3) BATCH (32) MAX_LEN (64)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
threads=${1:-2}
steps=${STEPS:-20} warmup=${WARMUP:-3} batch=${BATCH:-32} max_len=${MAX_LEN:-64}
model=${MODEL:-models/base/all-MiniLM-L6-v2}
data=datasets/banking77
[ -s "$data/train.csv" ] || data=../shared/datasets/banking77
py=${PYTHON:-$root/.venv/bin/python}
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
[ -f "$model/model.safetensors" ] || { echo "missing $model: run scripts/setup.sh" >&2; exit 1; }
"$py" -c 'import torch, transformers' 2>/dev/null || { echo "needs torch + transformers in $py" >&2; exit 1; }

cargo build --release --quiet -p distill-train --example finetune_bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
args=(--model "$model" --data "$data/train.csv" --batch "$batch" --max-len "$max_len" --steps "$steps"
  --warmup "$warmup" --threads "$threads")

measure() { # name cmd...: last stdout line -> $work/name.json, peak RSS (KiB) -> $work/name.rss
  local name=$1; shift
  echo "+ $*" >&2
  /usr/bin/time -v -o "$work/$name.time" "$@" 2>"$work/$name.err" | tail -n 1 >"$work/$name.json" \
    || { tail -n 20 "$work/$name.err" >&2; exit 1; }
  awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$work/$name.time" >"$work/$name.rss"
}
measure distill target/release/examples/finetune_bench "${args[@]}"
measure torch "$py" scripts/bench/peers/torch_finetune_cpu.py "${args[@]}"

"$py" - "$work" <<'PY'
import json, sys
w = sys.argv[1]
d, t = (json.load(open(f"{w}/{n}.json")) for n in ("distill", "torch"))
rd, rt = (int(open(f"{w}/{n}.rss").read()) / 1024 ** 2 for n in ("distill", "torch"))
print(f"setup: batch {d['batch']}, max length {d['max_len']}, {d['steps']} timed steps, {d['threads']} threads, "
      f"{d['padded_tokens_per_step']:.0f} padded tokens/step (torch {t['padded_tokens_per_step']:.0f})")
print(f"distill: {d['examples_per_s']:.2f} examples/s ({d['step_s']:.3f} s/step: forward {d['forward_s']:.3f}, "
      f"backward {d['backward_s']:.3f}, update {d['update_s']:.3f}), peak RSS {rd:.2f} GiB, last loss {d['last_loss']:.4f}")
print(f"torch {t['torch']}: {t['examples_per_s']:.2f} examples/s ({t['step_s']:.3f} s/step), peak RSS {rt:.2f} GiB, "
      f"last loss {t['last_loss']:.4f}")
print(f"ratio distill/torch examples/s = {d['examples_per_s'] / t['examples_per_s']:.2f}x (>1: distill faster)")
PY
