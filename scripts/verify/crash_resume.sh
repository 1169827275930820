#!/usr/bin/env bash
# kill -9 `distill teach` at random moments (real-time and Batch API paths, and a route task
# through the Batch API in two rounds), resume it, and
# count lost / duplicated / stale records, responses paid twice beyond the calls in flight,
# and billed calls missing from the ledger, against the sim-teacher's /stats. All must be 0
# (paid twice: at most --concurrency per kill). See crash_resume.py for the protocol.
# CI runs it small (RUNS=20 per path, INPUTS=150); raise them for a longer soak.
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
data=$root/datasets/banking77
[ -s "$data/train.csv" ] || data=$root/../shared/datasets/banking77
exec "$py" scripts/verify/crash_resume.py "$bin" "$data" \
  --routellm "$root/../shared/datasets/routellm" --route-spec "$root/datasets/gsm8k-routing/task.toml" \
  --runs "${RUNS:-20}" --inputs "${INPUTS:-150}" ${SEED:+--seed "$SEED"}
