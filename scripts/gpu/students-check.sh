#!/usr/bin/env bash
# On a lent GPU machine: the encoder-finetune rows of the two benchmarks that take hours on the 2-core CPU,
# in one run (everything prepared here by scripts/gpu/pack-carry.sh, named in the device tool's `carry`):
#   - scripts/bench/open_set.sh: closed- and open-set encoder-finetune students on Banking77 + MixSNIPS
#     out-of-scope traffic, trained and evaluated with --device cuda;
#   - scripts/bench/routing.sh: the encoder-finetune MMLU router (and the GSM8K loop, which is CPU work).
# Both run at once (the GPU is far from busy with one MiniLM fine-tune); their logs and metrics go to $OUT.
# Usage (GPU machine, repo root): scripts/gpu/students-check.sh    (BENCHES="routing" for one of them)
# Rehearsal here: DEVICE=cpu STUDENTS=linear THREADS=2 DISTILL_BIN=target/release/distill PYTHON=.venv/bin/python \
#   OUT=/tmp/sc-out scripts/gpu/students-check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
carry=${GPU_CARRY:-$root/.tools/gpu-carry}
out=${OUT:-/tmp/students-check-out}
work=${GPU_WORK:-/tmp/students-check}
dev=${DEVICE:-cuda}
py=${PYTHON:-python3}
students=${STUDENTS:-encoder-finetune}
threads=${THREADS:-8}
mkdir -p "$out"
rm -rf "$work" && mkdir -p "$work"
export PYTHONUNBUFFERED=1
log() { echo "[$(date -u +%T)] $*" | tee -a "$out/log.txt" >&2; }
die() { log "FAILED: $*"; exit 1; }
. scripts/gpu/lib.sh

log "students-check: device=$dev students=$students threads=$threads"
[ "$dev" != cpu ] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$out/log.txt" >&2
bin=${DISTILL_BIN:-}
[ -n "$bin" ] || gpu_unpack_distill
if [ "$dev" != cpu ]; then gpu_find_cuda_libs; fi
"$bin" --version >>"$out/log.txt" 2>&1 || die "the binary does not start (see log.txt)"
gpu_unpack_base "$work/minilm"
mkdir -p "$work/datasets"
tar -C "$work/datasets" -xJf "$carry/datasets.tar.xz" || die "cannot unpack datasets.tar.xz"

export DISTILL_BIN=$bin DEVICE=$dev DATASETS=$work/datasets BASE=$work/minilm STUDENTS=$students
benches=${BENCHES:-open_set routing}
t0=$(date +%s)
rc_open=0 rc_route=0
case " $benches " in *" open_set "*)
  WORK=$work/open-set scripts/bench/open_set.sh "$threads" >"$out/open_set.log" 2>&1 &
  open_set=$! ;; esac
case " $benches " in *" routing "*)
  WORK=$work/routing scripts/bench/routing.sh "$threads" >"$out/routing.log" 2>&1 &
  routing=$! ;; esac
if [ -n "${open_set:-}" ]; then
  wait $open_set; rc_open=$?
  log "open_set.sh exit $rc_open after $(( $(date +%s) - t0 )) s"
fi
if [ -n "${routing:-}" ]; then
  wait $routing; rc_route=$?
  log "routing.sh exit $rc_route after $(( $(date +%s) - t0 )) s"
fi
cp "$work/open-set/evals/metrics.json" "$out/open_set-metrics.json" 2>/dev/null
cp "$work/routing/mmlu-eval/metrics.json" "$out/routing-mmlu-metrics.json" 2>/dev/null
for m in "$work"/open-set/models/*/distill.json "$work"/routing/mmlu-router-*/tiers/*/distill.json; do
  [ -f "$m" ] && "$py" - "$m" <<'PY' | tee -a "$out/log.txt"
import json, sys
d = json.load(open(sys.argv[1]))
keys = ("kind", "device", "max_len", "epochs_run", "n_train", "dev_accuracy", "train_wall_s", "examples_per_s")
print("/".join(sys.argv[1].split("/")[-4:-1]), {k: d.get(k) for k in keys})
PY
done
tail -n 12 "$out/open_set.log" 2>/dev/null; tail -n 16 "$out/routing.log" 2>/dev/null
[ $rc_open -eq 0 ] && [ $rc_route -eq 0 ]
