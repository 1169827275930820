#!/usr/bin/env bash
# The playbook's table, measured: a replayed trace of RouteLLM's MMLU and GSM8K prompts through
# `distill gateway` with `router` routes (a linear router per benchmark, trained on half of its
# recorded outcomes, its threshold chosen by `distill eval` at 95% of GPT-4's quality), the
# answer cache on, and the sim-teacher replaying both models' recorded answers as the tiers.
# The trace: the held-out prompts of both (a seeded sample), 30% of requests repeats of earlier
# ones. The same trace also goes through the routers with the cache off, and through a fixed
# GPT-4 route with no cache: always-premium.
# Prints cache hit rate, premium share, quality (each answer's recorded correctness) and $ for
# both, and the ratios last.
# Usage: scripts/bench/gateway_trace.sh [unique prompts=2000] [repeat share=0.3]
# Env: WORK (work dir), CONCURRENCY (client threads, default 16), QUALITY_FLOOR_MMLU (0.95),
#      QUALITY_FLOOR_GSM8K (0.90).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
unique=${1:-2000}
repeats=${2:-0.3}
conc=${CONCURRENCY:-16}
floor_mmlu=${QUALITY_FLOOR_MMLU:-0.95}
floor_gsm8k=${QUALITY_FLOOR_GSM8K:-0.90}
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
source scripts/bench/lib.sh
bin=$(distill_bin)
rl=${DATASETS:-$root/../shared/datasets}/routellm
[ -d "$rl/mmlu" ] || { echo "no RouteLLM data under $rl" >&2; exit 1; }
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
echo "work dir: $work" >&2
export DISTILL_STATE_DIR=$work/state

trap stop_started EXIT

# --- routers: import, train on one half, eval (threshold) on the other ----------------------
for b in mmlu gsm8k; do
  cp "datasets/$b-routing/task.toml" "$work/$b.toml"
  if [ ! -f "$work/$b-router/distill.json" ]; then
    say "$b: import RouteLLM's outcomes, train a linear router, choose its threshold"
    if [ $b = mmlu ]; then files=("$rl"/mmlu/responses/*.csv); else files=("$rl/gsm8k/gsm8k_responses.csv"); fi
    (cd "$work" && "$bin" -q teach --task $b.toml --import-outcomes "${files[@]}" \
      --exclude "$rl/$b/contaminated_prompts.jsonl" --out $b.jsonl --split 0.5 >/dev/null)
    (cd "$work" && "$bin" -q train --task $b.toml --data $b.train.jsonl --out $b-router >/dev/null)
  fi
  floor=floor_$b
  (cd "$work" && "$bin" -q eval --task $b.toml --model $b-router --test $b.test.jsonl \
    --train $b.train.jsonl --quality-floor "${!floor}" --out $b-eval --force >/dev/null)
done
cat "$work"/mmlu.train.jsonl "$work"/mmlu.test.jsonl "$work"/gsm8k.train.jsonl "$work"/gsm8k.test.jsonl \
  >"$work/replay.jsonl"

say "sim-teacher replaying both models' recorded answers"
"$bin" -q sim-teacher --task "$work/mmlu.toml" --replay "$work/replay.jsonl" --port 0 \
  --latency-ms 0 --error-rate 0 >"$work/sim.out" 2>"$work/sim.err" &
pids+=($!)
upstream=$(wait_url "$work/sim.out" 'http://127\.0\.0\.1:[0-9]+/v1' "${pids[-1]}")

cat >"$work/gateway.toml" <<EOF
[[tier]]
name = "mixtral"
provider = "openai"
model = "mistralai/Mixtral-8x7B-Instruct-v0.1"
price_as = "together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1"
base_url = "$upstream"

[[tier]]
name = "gpt-4"
provider = "openai"
model = "gpt-4-1106-preview"
price_as = "gpt-4-1106-preview"
base_url = "$upstream"

[[route]]
name = "mmlu"
models = ["mmlu"]
policy = "router"
router = "mmlu-router"
threshold = "mmlu-eval/metrics.json"
tier = "gpt-4"
premium = "gpt-4"

[[route]]
name = "gsm8k"
models = ["gsm8k"]
policy = "router"
router = "gsm8k-router"
threshold = "gsm8k-eval/metrics.json"
tier = "gpt-4"
premium = "gpt-4"

[[route]]
name = "mmlu-no-cache"
models = ["mmlu-no-cache"]
policy = "router"
router = "mmlu-router"
threshold = "mmlu-eval/metrics.json"
tier = "gpt-4"
premium = "gpt-4"
cache = false

[[route]]
name = "gsm8k-no-cache"
models = ["gsm8k-no-cache"]
policy = "router"
router = "gsm8k-router"
threshold = "gsm8k-eval/metrics.json"
tier = "gpt-4"
premium = "gpt-4"
cache = false

[[route]]
name = "always-premium"
models = ["always-premium"]
policy = "fixed"
tier = "gpt-4"
cache = false
EOF
say "distill gateway"
"$bin" gateway --config "$work/gateway.toml" --port 0 2>"$work/gateway.err" &
gw=$!
pids+=("$gw")
url=$(wait_url "$work/gateway.err" 'http://127\.0\.0\.1:[0-9]+' "$gw")

say "replaying the trace"
python3 - "$work" "$url" "$unique" "$repeats" "$conc" <<'PY'
import concurrent.futures as cf, json, random, sys, urllib.request
work, url, unique, repeats, conc = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rng = random.Random(7)
outcome, prompts = {}, []
for b in ("mmlu", "gsm8k"):
    rows = [json.loads(l) for l in open(f"{work}/{b}.test.jsonl")]
    for r in rows:
        outcome[(b, r["text"])] = {t["tier"]: t.get("passed") for t in r["tiers"]}
    prompts += [(b, r["text"]) for r in rows if all(t.get("passed") is not None for t in r["tiers"])]
rng.shuffle(prompts)
prompts = prompts[:unique]
n_total = round(len(prompts) / (1 - repeats))
trace, seen = [], []
queue = list(prompts)
while len(trace) < n_total:
    if seen and (not queue or rng.random() < repeats):
        trace.append(rng.choice(seen))
    else:
        p = queue.pop()
        seen.append(p)
        trace.append(p)
thresholds = {}
for b in ("mmlu", "gsm8k"):
    m = json.load(open(f"{work}/{b}-eval/metrics.json"))
    thresholds[b] = [p["chosen"]["threshold"] for p in m["policies"] if p["kind"] == "router"][0]

def ask(model, text):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()
    req = urllib.request.Request(f"{url}/v1/chat/completions", body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["distill"]

def run(policy):
    with cf.ThreadPoolExecutor(conc) as ex:
        futs = [ex.submit(ask, policy(b), t) for b, t in trace]
        return [f.result() for f in futs]

results = {}
policies = (
    ("gateway (router + cache)", lambda b: b),
    ("router, no cache", lambda b: f"{b}-no-cache"),
    ("always GPT-4", lambda b: "always-premium"),
)
for name, policy in policies:
    ds = run(policy)
    passed = [outcome[(b, t)][d["tier"]] for (b, t), d in zip(trace, ds)]
    results[name] = {
        "requests": len(ds),
        "cache_hits": sum(d["cache_hit"] for d in ds),
        "premium": sum(d["tier"] == "gpt-4" for d in ds),
        "paid": sum(not d["cache_hit"] for d in ds),
        "paid_premium": sum(not d["cache_hit"] and d["tier"] == "gpt-4" for d in ds),
        "quality": sum(passed) / len(passed),
        "usd": sum(d["cost_usd"] for d in ds),
        "by": {b: sum(1 for (bb, _), d in zip(trace, ds) if bb == b) for b in ("mmlu", "gsm8k")},
    }
print(f"trace: {len(trace)} requests, {len(prompts)} unique held-out prompts "
      f"({sum(1 for b, _ in prompts if b == 'mmlu')} MMLU, {sum(1 for b, _ in prompts if b == 'gsm8k')} GSM8K), "
      f"{1 - len(prompts) / len(trace):.0%} repeats; routers' thresholds {thresholds}")
# premium: answers that came from GPT-4 (a cache hit counts as the tier that first answered);
# paid premium: GPT-4's share of the calls actually made.
print(f"{'policy':26} {'requests':>8} {'cache hits':>10} {'paid calls':>10} {'premium':>8} "
      f"{'paid prem':>9} {'quality':>8} {'$':>9} {'$/1k':>8}")
for name, r in results.items():
    print(f"{name:26} {r['requests']:8} {r['cache_hits'] / r['requests']:10.1%} {r['paid']:10} "
          f"{r['premium'] / r['requests']:8.1%} {r['paid_premium'] / max(r['paid'], 1):9.1%} "
          f"{r['quality']:8.1%} {r['usd']:9.4f} {r['usd'] / r['requests'] * 1000:8.4f}")
g, n, p = (results[k] for k, _ in policies)
print()
print(f"router alone saves {1 - n['usd'] / p['usd']:.1%}, the cache on top brings it to {1 - g['usd'] / p['usd']:.1%}")
print(f"ratio cost gateway / always GPT-4 = {g['usd'] / p['usd']:.3f} (saving {1 - g['usd'] / p['usd']:.1%}); "
      f"quality {g['quality']:.1%} vs {p['quality']:.1%} ({g['quality'] / p['quality']:.1%} of GPT-4's)")
PY
"$bin" spend --by route,tier >&2
