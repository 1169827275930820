#!/usr/bin/env bash
# The eval report renders in a real browser: headless Chromium draws the report that the
# eval end-to-end test (crates/distill-eval/tests/eval_e2e.rs) left in target/tmp/eval-fixture,
# and scripts/check_report.sh fails on a blank page or a missing chart.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${CARGO_TARGET_DIR:-target}/tmp/eval-fixture
[ -s "$dir/report.html" ] || { echo "report_renders: $dir/report.html is missing: run cargo test -p distill-eval first" >&2; exit 1; }
scripts/check_report.sh "$dir"
