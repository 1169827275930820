#!/usr/bin/env bash
# Routing metrics (PGR, APGR, CPT, the chosen threshold's quality and saving) recomputed in
# Python from the eval's own predictions.jsonl: the offline MMLU routing quickstart (RouteLLM's
# recorded outcomes) is run, then route_metrics.py checks every figure of its metrics.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
py=${DISTILL_TEST_PYTHON:-python3}
bin=${DISTILL_BIN:-}
if [ -z "$bin" ]; then
  rel=target/release/distill dbg=target/debug/distill
  if [ -x "$rel" ] && { [ ! -x "$dbg" ] || [ "$rel" -nt "$dbg" ]; }; then bin=$rel
  elif [ -x "$dbg" ]; then bin=$dbg
  else cargo build --quiet -p distill-cli; bin=$dbg
  fi
fi
case $bin in /*) ;; *) bin=$root/$bin ;; esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/task"
cp datasets/mmlu-routing/task.toml "$tmp/task/"
cp -rL datasets/mmlu-routing/outcomes "$tmp/task/outcomes" 2>/dev/null \
  || { echo "route_metrics: datasets/mmlu-routing/outcomes missing (scripts/setup.sh links RouteLLM's files)" >&2; exit 1; }
(cd "$tmp" && DISTILL_STATE_DIR="$tmp/state" "$bin" -q quickstart --example mmlu-routing \
  --task task/task.toml --models-dir models --evals-dir evals >"$tmp/out.txt")
"$py" scripts/verify/route_metrics.py "$tmp/evals/mmlu-routing-quickstart"
