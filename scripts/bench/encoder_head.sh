#!/usr/bin/env bash
# encoder-head end to end on Banking77 with gold labels: embed the 10,003 training sentences with
# frozen all-MiniLM-L6-v2 and train the head, then test accuracy on the 3,080 test sentences.
# Peer: sentence-transformers + scikit-learn LogisticRegression on the same machine, same run.
# distill holds out 10% of train as its dev split (early stopping, temperature); the peer trains
# on all of it. The distill run starts from an empty embedding cache; a second, cached run shows
# what retraining the head costs. Usage: scripts/bench/encoder_head.sh [threads=2] [head=logistic]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
threads=${1:-2}
head=${2:-logistic}
model=${MODEL:-models/base/all-MiniLM-L6-v2}
data=datasets/banking77
[ -s "$data/train.csv" ] || data=../shared/datasets/banking77
py=${PYTHON:-$root/.venv/bin/python}
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads

[ -f "$model/model.safetensors" ] || { echo "missing $model: run scripts/setup.sh" >&2; exit 1; }
if ! "$py" -c 'import torch, sentence_transformers, sklearn' 2>/dev/null; then
  [ -x "$py" ] || python3 -m venv "$root/.venv"
  "$root/.venv/bin/pip" install --quiet torch sentence-transformers scikit-learn
  py=$root/.venv/bin/python
fi

cargo build --release --quiet -p distill-train --example encoder_bench
bench=target/release/examples/encoder_bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run() { echo "+ $*" >&2; "$@" | tail -n 1; }
cold=$(run $bench train --model "$model" --data "$data/train.csv" --test "$data/test.csv" \
  --out "$work/model" --cache "$work/cache" --head "$head" --threads "$threads")
peer=$(run "$py" scripts/bench/peers/st_embed.py train --model "$model" --data "$data/train.csv" \
  --test "$data/test.csv" --batch 64 --threads "$threads")
warm=$(run $bench train --model "$model" --data "$data/train.csv" --test "$data/test.csv" \
  --out "$work/model2" --cache "$work/cache" --head "$head" --threads "$threads")

"$py" - "$cold" "$warm" "$peer" <<'PY'
import json, sys
cold, warm, peer = (json.loads(a) for a in sys.argv[1:])
print(f"distill encoder-head ({cold['head']}): train {cold['train_wall_s']:.1f} s "
      f"(embed {cold['embed_s']:.1f} s, head {cold['head_s']:.1f} s), test accuracy {cold['test_accuracy']:.4f}, "
      f"dev {cold['dev_accuracy']:.4f}, {cold['epochs']} epochs")
print(f"distill retrain from cache: {warm['train_wall_s']:.1f} s (embeddings computed: {warm['embeddings_computed']}), "
      f"test accuracy {warm['test_accuracy']:.4f}")
print(f"sentence-transformers + sklearn LR: {peer['train_wall_s']:.1f} s (embed {peer['embed_s']:.1f} s, "
      f"fit {peer['head_s']:.1f} s), test accuracy {peer['test_accuracy']:.4f}")
print(f"ratio end-to-end time sklearn/distill = {peer['train_wall_s'] / cold['train_wall_s']:.2f}x (>1: distill faster); "
      f"accuracy distill-sklearn = {cold['test_accuracy'] - peer['test_accuracy']:+.4f}")
PY
