#!/usr/bin/env bash
# encoder-finetune accuracy on Banking77 with the default recipe, through the real CLI: train on
# the 10,003 training sentences (10% held out as dev for early stopping and temperature), then
# predict the 3,080 test sentences and score against their gold labels. Two label sources:
# `gold` (the data set's own labels) and `teacher` (the sim teacher at 94% accuracy, written by the
# quickstart to datasets/banking77/teacher.jsonl). Prints wall time, examples/s and peak RSS of
# each training run and, last, the gold-label accuracy against the 0.93 target.
# About 30 minutes per label source on 2 CPU cores.
# Usage: scripts/bench/finetune_accuracy.sh [threads=2]   Env: LABELS ("gold teacher"), DEVICE (cpu)
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-2}
labels=${LABELS:-gold teacher}
device=${DEVICE:-cpu}
model=${MODEL:-models/base/all-MiniLM-L6-v2}
data=datasets/banking77
[ -s "$data/train.csv" ] || data=../shared/datasets/banking77
[ -f "$model/model.safetensors" ] || { echo "missing $model: run scripts/setup.sh" >&2; exit 1; }

cargo build --release --quiet -p distill-cli
distill=target/release/distill
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export DISTILL_STATE_DIR=$work/state

gold_acc=
for source in $labels; do
  case $source in
    gold) train=$data/train.csv ;;
    teacher) train=datasets/banking77/teacher.jsonl
      [ -s "$train" ] || { echo "missing $train: run scripts/setup.sh (the quickstart writes it)" >&2; exit 1; } ;;
    *) echo "unknown label source $source (gold or teacher)" >&2; exit 1 ;;
  esac
  echo "+ encoder-finetune on $source labels ($train)" >&2
  /usr/bin/time -v -o "$work/$source.time" "$distill" train --task datasets/banking77/task.toml \
    --data "$train" --student encoder-finetune --base "$model" --out "$work/$source" \
    --threads "$threads" --device "$device" 2>&1 | grep --line-buffered -E "^(epoch|early stop|trained)" >&2
  "$distill" --quiet predict --model "$work/$source" --input "$data/test.csv" \
    --out "$work/$source-test.jsonl" --gold-column category
  rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); printf "%.2f", $2 / 1048576}' "$work/$source.time")
  # Scored from the predictions' own `label` and `gold` fields (the test file's category column).
  python3 - "$work/$source" "$source" "$rss" <<'PY'
import json, sys
out, source, rss = sys.argv[1:]
rows = [json.loads(l) for l in open(f"{out}-test.jsonl")]
acc = sum(r["label"] == r["gold"] for r in rows) / len(rows)
m = json.load(open(f"{out}/distill.json"))
print(f"{source:8} labels: test accuracy {acc:.4f} ({len(rows):,} gold), dev {m['dev_accuracy']:.4f}, "
      f"{m['epochs_run']} epochs, {m['train_wall_s']:.0f} s, {m['examples_per_s']:.1f} examples/s, "
      f"peak RSS {rss} GiB")
open(f"{out}.acc", "w").write(f"{acc:.4f}")
PY
  [ "$source" = gold ] && gold_acc=$(cat "$work/$source.acc")
done
if [ -n "$gold_acc" ]; then
  python3 -c "import sys; a=float(sys.argv[1]); print(f'gold-label test accuracy {a:.4f} vs target 0.93: {a/0.93:.3f}x', 'PASS' if a >= 0.93 else 'MISS')" "$gold_acc"
fi
