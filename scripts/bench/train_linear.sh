#!/usr/bin/env bash
# The linear student on Banking77 with gold labels vs scikit-learn TF-IDF + LogisticRegression,
# same machine, same threads, same run: train wall time, test accuracy on the 3,080 test
# sentences, and prediction throughput. Goals: accuracy >= 0.90, training <= 15 s on 2 threads.
# Usage: scripts/bench/train_linear.sh [threads=2]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
threads=${1:-2}
data=datasets/banking77
[ -s "$data/train.csv" ] || data=../shared/datasets/banking77
py=${PYTHON:-$root/.venv/bin/python}
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
if ! "$py" -c 'import sklearn' 2>/dev/null; then
  python3 -m venv "$root/.venv" && "$root/.venv/bin/pip" install --quiet scikit-learn numpy
  py=$root/.venv/bin/python
fi
[ "${DISTILL_BENCH_NO_BUILD:-}" = 1 ] || cargo build --release --quiet -p distill-cli
distill=target/release/distill
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== distill linear ($threads threads)"
t0=$(date +%s.%N)
$distill -q --state-dir "$work/state" train --task datasets/banking77/task.toml --data "$data/train.csv" \
  --student linear --threads "$threads" --out "$work/linear" >/dev/null
t1=$(date +%s.%N)
$distill -q predict --model "$work/linear" --input "$data/test.csv" --gold-column category \
  --threads "$threads" --out "$work/preds.jsonl" >/dev/null
t2=$(date +%s.%N)
read -r acc n < <("$py" - "$work/preds.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(sum(r["label"] == r["gold"] for r in rows) / len(rows), len(rows))
PY
)
d_train=$(echo "$t1 - $t0" | bc -l); d_pred=$(echo "$t2 - $t1" | bc -l)
printf 'distill: train %.2f s (incl. process start, reading, dev split), test accuracy %.4f on %d, predict %.2f s (%.0f texts/s incl. start)\n' \
  "$d_train" "$acc" "$n" "$d_pred" "$(echo "$n / $d_pred" | bc -l)"

echo "== scikit-learn TF-IDF (word 1-2 + char_wb 2-5) + LogisticRegression ($threads threads)"
read -r p_train p_acc < <("$py" - "$data/train.csv" "$data/test.csv" "$threads" <<'PY'
import csv, sys, time
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline, make_union
def load(p):
    with open(p, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["category"] for r in rows]
xtr, ytr = load(sys.argv[1]); xte, yte = load(sys.argv[2])
t = time.perf_counter()
vec = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True),
                 TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, lowercase=True))
clf = make_pipeline(vec, LogisticRegression(C=10.0, max_iter=1000))
clf.fit(xtr, ytr)
train_s = time.perf_counter() - t
acc = sum(p == y for p, y in zip(clf.predict(xte), yte)) / len(yte)
print(f"{train_s:.3f} {acc:.4f}")
PY
)
printf 'scikit-learn: train %.2f s, test accuracy %.4f\n' "$p_train" "$p_acc"
printf 'accuracy: distill %.4f vs scikit-learn %.4f (goal >= 0.90)\n' "$acc" "$p_acc"
printf 'train time ratio (scikit-learn / distill, >1 = distill faster): %.2f\n' "$(echo "$p_train / $d_train" | bc -l)"
