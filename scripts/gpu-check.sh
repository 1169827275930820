#!/usr/bin/env bash
# Proves the CUDA build of distill on a lent NVIDIA GPU, in one run (the GPU machine is lent for minutes, so
# everything is prepared here and this script runs once there). It needs no Rust toolchain: it is carried with
# the stripped, xz-compressed release binary and the data/weights that scripts/gpu/pack-carry.sh puts in
# .tools/gpu-carry (see that script). Steps:
#   1. full fine-tune of all-MiniLM-L6-v2 (encoder-finetune) on Banking77 train, gold labels, --device cuda:
#      examples/s, wall time;
#   2. `distill predict` of the 3,080 test sentences on CUDA: sentences/s and test accuracy;
#   3. CPU-vs-CUDA parity: the same checkpoint predicts PARITY_N test sentences with --device cpu and cuda;
#      labels must match and logits (recovered from the full probability vectors) agree within 1e-3;
#   4. the same fine-tune and prediction in PyTorch `transformers` (scripts/gpu/torch_finetune.py);
#   5. a summary with ratios: distill-CUDA vs distill on the 2-core CPU (CPU_EXAMPLES_PER_S, measured on the
#      build machine) and vs PyTorch on the same GPU.
# Results go to $OUT (log.txt, summary.json, distill.json, torch.json, parity.json).
#
# Usage (on the GPU machine, from the repo root):  scripts/gpu-check.sh
# Rehearsal on a CPU-only machine:  GPU_CHECK_DEVICE=cpu DISTILL_BIN=target/release/distill LIMIT_TRAIN=200 \
#   LIMIT_TEST=100 EPOCHS=1 PARITY_N=20 PYTHON=.venv/bin/python scripts/gpu-check.sh
# Knobs (env): EPOCHS (3) BATCH (32) MAX_LEN (64) LR (1e-4, distill's default) SEED (42) PARITY_N (500)
#   CPU_EXAMPLES_PER_S (distill encoder-finetune on the 2-core CPU, for the speed-up ratio) SKIP_TORCH (0)
#   CUDA_LIB_ROOTS (extra folders to search for the CUDA libraries first) ONLY_LIBS (1: stop after finding them)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
carry=${GPU_CARRY:-$root/.tools/gpu-carry}
out=${OUT:-/tmp/gpu-check-out}
work=${GPU_WORK:-/tmp/gpu-check}
dev=${GPU_CHECK_DEVICE:-cuda}
py=${PYTHON:-python3}
epochs=${EPOCHS:-3} batch=${BATCH:-32} max_len=${MAX_LEN:-64} lr=${LR:-1e-4} seed=${SEED:-42}
parity_n=${PARITY_N:-500} limit_train=${LIMIT_TRAIN:-0} limit_test=${LIMIT_TEST:-0}
mkdir -p "$out"
rm -rf "$work" && mkdir -p "$work"
export PYTHONUNBUFFERED=1
log() { echo "[$(date -u +%T)] $*" | tee -a "$out/log.txt" >&2; }
die() { log "FAILED: $*"; exit 1; }
# Runs a command with its output appended to log.txt; prints its wall seconds on stdout (integer ns arithmetic:
# the GPU machine may lack bc).
timed() {
  local t0 t1 rc
  t0=$(date +%s%N)
  "$@" >>"$out/log.txt" 2>&1
  rc=$?
  t1=$(date +%s%N)
  [ $rc -eq 0 ] || { tail -n 30 "$out/log.txt" >&2; die "exit $rc: $*"; }
  printf '%d.%03d\n' $(((t1 - t0) / 1000000000)) $((((t1 - t0) / 1000000) % 1000))
}
export DISTILL_STATE_DIR="$work/state"

log "gpu-check: device=$dev epochs=$epochs batch=$batch max_len=$max_len lr=$lr"
if [ "$dev" != cpu ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$out/log.txt" >&2
fi

# 1. The binary and 2. the CUDA libraries it links (scripts/gpu/lib.sh).
. scripts/gpu/lib.sh
bin=${DISTILL_BIN:-}
[ -n "$bin" ] || gpu_unpack_distill
[ "$dev" != cpu ] && gpu_find_cuda_libs
"$bin" --version >>"$out/log.txt" 2>&1 || die "the binary does not start (see log.txt)"
[ "${ONLY_LIBS:-0}" = 1 ] && { log "libraries resolved; ONLY_LIBS=1, stopping"; exit 0; }

# 3. Base model (f16 carried, widened back to f32: exact) and data.
base="$work/minilm"
gpu_unpack_base "$base"
data="$work/banking77"
mkdir -p "$data"
cp "$carry"/banking77/* "$data/"
clip() {  # rehearsals: keep the header and N rows spread evenly over the file (it is sorted by label); 0 = all.
  # Python's csv module, because Banking77 has quoted fields spanning lines.
  [ "$2" -gt 0 ] || return 0
  "$py" - "$1" "$2" <<'PY'
import csv, sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
head, body = rows[0], rows[1:]
step = max(1, len(body) // n)
with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows([head] + body[::step][:n])
PY
  mv "$1.tmp" "$1"
}
clip "$data/train.csv" "$limit_train"
clip "$data/test.csv" "$limit_test"
n_test=$("$py" -c "import csv,sys; print(sum(1 for _ in csv.DictReader(open(sys.argv[1], newline='', encoding='utf-8'))))" "$data/test.csv")
cp "$data/test.csv" "$data/parity.csv"
clip "$data/parity.csv" "$parity_n"

# 4. distill: fine-tune on the GPU, then predict the test set (twice: the first run also JIT-compiles the
#    kernels' PTX for this GPU, the second shows steady-state throughput).
model="$work/models/minilm-ft"
log "distill train encoder-finetune on $dev"
train_s=$(timed "$bin" --quiet train --task "$data/task.toml" --data "$data/train.csv" --student encoder-finetune \
  --base "$base" --out "$model" --epochs "$epochs" --batch-size "$batch" --max-len "$max_len" --lr "$lr" \
  --seed "$seed" --device "$dev") || exit 1
cp "$model/distill.json" "$out/distill.json"
log "distill train: ${train_s}s wall"
pred1_s=$(timed "$bin" --quiet predict --model "$model" --input "$data/test.csv" --out "$work/pred-$dev.jsonl" \
  --top-k 1000 --batch-size 256 --device "$dev") || exit 1
pred2_s=$(timed "$bin" --quiet predict --model "$model" --input "$data/test.csv" --out "$work/pred-$dev.jsonl" \
  --top-k 1000 --batch-size 256 --device "$dev") || exit 1
log "distill predict ($n_test sentences): ${pred1_s}s cold, ${pred2_s}s warm"
timed "$bin" --quiet predict --model "$model" --input "$data/parity.csv" --out "$work/pred-parity-$dev.jsonl" \
  --top-k 1000 --device "$dev" >/dev/null || exit 1
par_s=$(timed "$bin" --quiet predict --model "$model" --input "$data/parity.csv" --out "$work/pred-parity-cpu.jsonl" \
  --top-k 1000 --device cpu) || exit 1
log "distill predict on cpu ($parity_n sentences, parity reference): ${par_s}s"

# 5. The PyTorch peer, same model/batch/length/optimiser/epochs, on the same device.
if [ "${SKIP_TORCH:-0}" != 1 ]; then
  log "PyTorch transformers peer on $dev"
  n_train_distill=$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['n_train'])" "$out/distill.json")
  timed "$py" scripts/gpu/torch_finetune.py --base "$base" --train "$data/train.csv" --test "$data/test.csv" \
    --labels "$data/categories.json" --epochs "$epochs" --batch-size "$batch" --max-len "$max_len" --lr "$lr" \
    --seed "$seed" --device "$dev" --limit-train "$n_train_distill" --out "$out/torch.json" >/dev/null || exit 1
fi

# 6. Parity, accuracy and the summary (ratios printed last).
"$py" scripts/gpu/summarize.py --out "$out" --test "$data/test.csv" --distill-json "$out/distill.json" \
  --pred "$work/pred-$dev.jsonl" --parity "$work/pred-parity-$dev.jsonl" "$work/pred-parity-cpu.jsonl" \
  --train-wall "$train_s" --predict-wall "$pred2_s" --predict-wall-cold "$pred1_s" \
  --torch-json "$out/torch.json" --cpu-examples-per-s "${CPU_EXAMPLES_PER_S:-0}" --device "$dev" \
  2>&1 | tee -a "$out/log.txt"
exit "${PIPESTATUS[0]}"
