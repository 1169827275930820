#!/usr/bin/env bash
# The linear multilabel student on MixSNIPS (gold intents, 39,776 train / 2,199 test) vs
# scikit-learn OneVsRestClassifier(LogisticRegression) on TF-IDF word 1-2 + char_wb 2-5 grams,
# same machine, same threads, same run, one fit each: exact-set accuracy, micro F1 and training
# wall time. Goals (issue 12): exact-set accuracy >= the peer's, training faster.
# distill's time is the whole `distill train` process (start, reading, dev split, calibration);
# scikit-learn's is `fit` alone (reading and imports excluded), which favours the peer.
# Usage: scripts/bench/multilabel_linear.sh [threads=2]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
. scripts/bench/lib.sh
threads=${1:-2}
data=datasets/mixsnips
[ -s "$data/train.jsonl" ] || data=../shared/datasets/mixsnips
py=${PYTHON:-$root/.venv/bin/python}
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
if ! "$py" -c 'import sklearn' 2>/dev/null; then
  python3 -m venv "$root/.venv" && "$root/.venv/bin/pip" install --quiet scikit-learn numpy
  py=$root/.venv/bin/python
fi
distill=$(distill_bin)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp datasets/mixsnips/task.toml "$work/task.toml"
for f in train.jsonl test.jsonl intents.json; do ln -s "$root/$data/$f" "$work/$f"; done

echo "== distill linear ($threads threads)"
t0=$(date +%s.%N)
$distill -q --state-dir "$work/state" train --task "$work/task.toml" --data "$work/train.jsonl" \
  --student linear --threads "$threads" --out "$work/linear" >/dev/null
t1=$(date +%s.%N)
$distill -q predict --model "$work/linear" --input "$work/test.jsonl" --gold-column intents \
  --threads "$threads" --out "$work/preds.jsonl" >/dev/null
read -r acc micro n < <("$py" - "$work/preds.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
tp = fp = fn = 0
for r in rows:
    p, g = set(r["labels"]), set(json.loads(r["gold"]))
    tp += len(p & g); fp += len(p - g); fn += len(g - p)
print(sum(set(r["labels"]) == set(json.loads(r["gold"])) for r in rows) / len(rows), 2 * tp / (2 * tp + fp + fn), len(rows))
PY
)
d_train=$(echo "$t1 - $t0" | bc -l)
printf 'distill: train %.2f s, exact-set accuracy %.4f, micro F1 %.4f on %d test requests\n' "$d_train" "$acc" "$micro" "$n"

echo "== scikit-learn OneVsRest(LogisticRegression) on TF-IDF word 1-2 + char_wb 2-5 ($threads threads)"
read -r p_train p_acc p_micro version < <("$py" - "$data/train.jsonl" "$data/test.jsonl" "$threads" <<'PY'
import json, sys, time
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline, make_union
from sklearn.preprocessing import MultiLabelBinarizer
def load(p):
    rows = [json.loads(l) for l in open(p, encoding="utf-8")]
    return [r["text"] for r in rows], [r["intents"] for r in rows]
xtr, ytr = load(sys.argv[1]); xte, yte = load(sys.argv[2])
mlb = MultiLabelBinarizer(); Ytr = mlb.fit_transform(ytr); Yte = mlb.transform(yte)
t = time.perf_counter()
vec = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True),
                 TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, lowercase=True))
clf = make_pipeline(vec, OneVsRestClassifier(LogisticRegression(C=10.0, max_iter=1000), n_jobs=int(sys.argv[3])))
clf.fit(xtr, Ytr)
train_s = time.perf_counter() - t
P = clf.predict(xte)
print(f"{train_s:.3f} {accuracy_score(Yte, P):.4f} {f1_score(Yte, P, average='micro'):.4f} {sklearn.__version__}")
PY
)
printf 'scikit-learn %s: train %.2f s, exact-set accuracy %.4f, micro F1 %.4f\n' "$version" "$p_train" "$p_acc" "$p_micro"
printf 'exact-set accuracy: distill %.4f vs scikit-learn %.4f (goal: >=)\n' "$acc" "$p_acc"
printf 'train time ratio (scikit-learn / distill, >1 = distill faster): %.2f\n' "$(echo "$p_train / $d_train" | bc -l)"
