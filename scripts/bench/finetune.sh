#!/usr/bin/env bash
# encoder-finetune training throughput on the CPU: distill vs PyTorch `transformers`, same model
# (all-MiniLM-L6-v2 + a fresh 77-way head), same fixed Banking77 batches (batch 32, max length 64,
# each padded to its longest row), same step (train-mode forward with dropout, cross-entropy,
# backward, clip to norm 1, AdamW without decay on biases/LayerNorm), same thread count.
#
# Fair by construction: RUNS runs of each side, alternating (distill, torch, distill, ...) so
# drift on a shared machine hits both alike; WARMUP untimed steps then STEPS timed ones per run;
# the same statistic for both (the median over runs of each run's examples/s, per-phase times
# and peak RSS). The peer's versions, BLAS, oneDNN and thread settings are printed, and both
# sides measure their own matmul speed on the step's dominant shape: a side whose training
# throughput is far below what its matmul allows (or a peer whose matmul is far below ours) is
# flagged, because that means the benchmark is broken, not that anyone won.
# Usage: scripts/bench/finetune.sh [threads=2]
# Env: RUNS (3) STEPS (20) WARMUP (3) BATCH (32) MAX_LEN (64) PYTHON (.venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
threads=${1:-2}
runs=${RUNS:-3} steps=${STEPS:-20} warmup=${WARMUP:-3} batch=${BATCH:-32} max_len=${MAX_LEN:-64}
model=${MODEL:-models/base/all-MiniLM-L6-v2}
data=datasets/banking77
[ -s "$data/train.csv" ] || data=../shared/datasets/banking77
py=${PYTHON:-$root/.venv/bin/python}
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
[ -f "$model/model.safetensors" ] || { echo "missing $model: run scripts/setup.sh" >&2; exit 1; }
if ! "$py" -c 'import torch, transformers' 2>/dev/null; then
  # The current releases, never pinned lower: the peer must be PyTorch as users get it today.
  [ -x "$py" ] || { python3 -m venv "$root/.venv"; py=$root/.venv/bin/python; }
  "$py" -m pip install --quiet --upgrade torch transformers
fi

cargo build --release --quiet -p distill-train --example finetune_bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
args=(--model "$model" --data "$data/train.csv" --batch "$batch" --max-len "$max_len" --steps "$steps"
  --warmup "$warmup" --threads "$threads")

measure() { # name run cmd...: last stdout line -> $work/name.run.json, peak RSS (KiB) -> .rss
  local name=$1 run=$2; shift 2
  echo "+ [$name $run] $*" >&2
  /usr/bin/time -v -o "$work/$name.$run.time" "$@" 2>"$work/$name.$run.err" | tail -n 1 >"$work/$name.$run.json" \
    || { tail -n 20 "$work/$name.$run.err" >&2; exit 1; }
  awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$work/$name.$run.time" >"$work/$name.$run.rss"
}
for r in $(seq "$runs"); do
  measure distill "$r" target/release/examples/finetune_bench "${args[@]}"
  measure torch "$r" "$py" scripts/bench/peers/torch_finetune_cpu.py "${args[@]}"
done

"$py" - "$work" "$runs" <<'PY'
import json, statistics, sys
w, runs = sys.argv[1], int(sys.argv[2])
def load(name):
    out = []
    for r in range(1, runs + 1):
        d = json.load(open(f"{w}/{name}.{r}.json"))
        d["rss_gib"] = int(open(f"{w}/{name}.{r}.rss").read()) / 1024 ** 2
        out.append(d)
    return out
D, T = load("distill"), load("torch")
med = lambda xs, k: statistics.median(x[k] for x in xs)
d0, t0 = D[0], T[0]
# Forward + backward of the non-embedding weights: ~6 FLOPs per weight per token (MiniLM-L6:
# 6 layers x (4 x 384^2 + 2 x 384 x 1536) weights); attention scores are left out (small here).
weights = 6 * (4 * 384 * 384 + 2 * 384 * 1536)
flops = lambda x: 6 * weights * x["padded_tokens_per_step"]
print(f"setup: batch {d0['batch']}, max length {d0['max_len']}, {d0['steps']} timed steps x {runs} runs per side "
      f"(alternating), {d0['threads']} threads, {d0['padded_tokens_per_step']:.0f} padded tokens/step "
      f"(torch {t0['padded_tokens_per_step']:.0f}); statistic: median over runs")
print(f"peer: torch {t0['torch']}, BLAS {t0['blas']}, MKL {t0['mkl']}, oneDNN available {t0['mkldnn']['available']} "
      f"enabled {t0['mkldnn']['enabled']}, CPU capability {t0['cpu_capability']}, "
      f"torch.get_num_threads() {t0['torch_threads']}, interop threads {t0['interop_threads']}")
for line in t0.get("libraries", []):
    print(f"peer library: {line}")
print(f"distill allocator: {d0['allocator']}")
for name, xs in (("distill", D), (f"torch {t0['torch']}", T)):
    eps = [round(x["examples_per_s"], 2) for x in xs]
    step = med(xs, "step_s")
    achieved = flops(xs[0]) / step / 1e9
    probe = med(xs, "matmul_gflops")
    print(f"{name}: {med(xs, 'examples_per_s'):.2f} examples/s (runs {eps}; {step:.3f} s/step: forward "
          f"{med(xs, 'forward_s'):.3f}, backward {med(xs, 'backward_s'):.3f}, update {med(xs, 'update_s'):.3f}), "
          f"peak RSS {med(xs, 'rss_gib'):.2f} GiB; matmul probe {probe:.1f} GFLOP/s, step achieves "
          f"~{achieved:.1f} GFLOP/s ({achieved / probe:.0%} of its matmul)")
    if achieved / probe < 0.2:
        print(f"WARNING: {name} runs far below its own matmul speed: check threads and BLAS before trusting this")
dp, tp = med(D, "matmul_gflops"), med(T, "matmul_gflops")
print(f"matmul probe torch/distill = {tp / dp:.2f}x (the peer's BLAS on this CPU; its step efficiency above says "
      f"whether the peer itself runs as it should)")
if tp < 0.25 * dp:
    print(f"WARNING: the peer's matmul ({tp:.1f} GFLOP/s) is far below distill's ({dp:.1f}): check its threads and BLAS")
print(f"peak RSS distill/torch = {med(D, 'rss_gib') / med(T, 'rss_gib'):.2f}x (<=1: distill uses less)")
print(f"ratio distill/torch examples/s = {med(D, 'examples_per_s') / med(T, 'examples_per_s'):.2f}x (>1: distill faster)")
PY
