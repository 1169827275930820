#!/usr/bin/env bash
# Extraction inference throughput on CPU: distill's encoder tagger (predict_batch: layout,
# forward, Viterbi, spans) vs the same exported model in PyTorch transformers
# (AutoModelForTokenClassification: tokenise, forward, argmax; batches ordered by length, as distill
# orders them), the same Restaurant-8k test
# turns with their question as the second segment, batches of 64, the same thread count, one
# warm-up and the median of the same repetitions on each side. The model is a one-epoch tagger
# trained here on 500 gold turns (speed does not depend on how well it was trained), or $MODEL.
# Usage: scripts/bench/extract_inference.sh [threads=2] [n=2048]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
. scripts/bench/lib.sh
threads=${1:-2}
n=${2:-2048}
py=${PYTHON:-$root/.venv/bin/python}
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
if ! "$py" -c 'import torch, transformers' 2>/dev/null; then
  [ -x "$py" ] || python3 -m venv "$root/.venv"
  "$root/.venv/bin/pip" install --quiet torch transformers
  py=$root/.venv/bin/python
fi
data=$root/datasets/restaurant8k/test.jsonl
[ -s "$data" ] || { echo "missing $data: run scripts/setup.sh" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model=${MODEL:-}
if [ -z "$model" ]; then
  distill=$(distill_bin)
  head -n 500 "$root/datasets/restaurant8k/train.jsonl" | "$py" -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    print(json.dumps({"id": r["id"], "text": r["text"], "status": "ok",
        "context": {"requested_slots": ", ".join(r["requested_slots"])},
        "output": {"spans": r["spans"]}, "provider": "gold", "model": "gold"}))' >"$work/records.jsonl"
  $distill -q --state-dir "$work/state" train --task datasets/restaurant8k/task.toml \
    --data "$work/records.jsonl" --student encoder-finetune --epochs 1 \
    --base "$root/models/base/all-MiniLM-L6-v2" --out "$work/tagger" >/dev/null
  model=$work/tagger
fi
if [ -n "${DISTILL_EXAMPLES:-}" ]; then bench=$DISTILL_EXAMPLES/tag_throughput
else cargo build --release --quiet -p distill-train --example tag_throughput; bench=target/release/examples/tag_throughput; fi
d=$($bench --model "$model" --data "$data" --n "$n" --batch 64 --reps 3)
p=$("$py" scripts/bench/peers/hf_token_classify.py --model "$model" --data "$data" --n "$n" --batch 64 --reps 3 --threads "$threads")
"$py" - "$d" "$p" <<'PY'
import json, sys
d, p = (json.loads(a) for a in sys.argv[1:])
print(f"n={d['n']} batch=64 reps=3 (median); distill threads={d['threads']}; peer torch {p['torch']} transformers {p['transformers']} threads={p['threads']}")
print(f"throughput  distill {d['sentences_per_s']:8.1f} sentences/s   transformers {p['sentences_per_s']:8.1f} sentences/s")
print(f"ratio throughput distill/transformers = {d['sentences_per_s'] / p['sentences_per_s']:.2f}x")
PY
