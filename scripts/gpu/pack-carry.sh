#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on the GPU machine into .tools/gpu-carry (git-ignored), to be named in the
# device tool's `carry`. The carried tree is limited to 64 MiB, so: the release binary is stripped and xz -9'd
# (~55 MB -> ~7 MB), all-MiniLM-L6-v2's weights travel as f16 (90 -> 45 MB; widened back to f32 there), plus the
# Banking77 CSVs and task.toml, and for scripts/gpu/students-check.sh the slices of the shared data sets that the
# open-set and routing benchmarks read (datasets.tar.xz: MixSNIPS test + its first 2,000 train lines, RouteLLM's
# MMLU and GSM8K outcomes; ~1 MB compressed).
#
# Usage: scripts/gpu/pack-carry.sh [BINARY]     (default target-cuda/release/distill)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target-cuda/release/distill}
dst=.tools/gpu-carry
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
[ -x "$bin" ] || { echo "pack-carry: no binary at $bin (build it: see scripts/setup-cuda.sh)" >&2; exit 1; }
mkdir -p "$dst/minilm" "$dst/banking77"

# The PTX ISA tells which driver can load the kernels: 9.0 = CUDA 13.0 (the lent H100/H200's driver 580.x).
isa=$(strings "$bin" | grep -E '^\.version [0-9]+\.[0-9]+' | sort -u | tr '\n' ' ' || true)
echo "PTX ISA in $bin: ${isa:-none (is this a --features cuda build?)}" >&2
strip -o "$dst/distill.stripped" "$bin"
xz -9 -T2 -c "$dst/distill.stripped" >"$dst/distill.xz.tmp" && mv "$dst/distill.xz.tmp" "$dst/distill.xz"
rm -f "$dst/distill.stripped"

base=$(readlink -f models/base/all-MiniLM-L6-v2)
[ -f "$base/model.safetensors" ] || { echo "pack-carry: no base model (run scripts/setup.sh)" >&2; exit 1; }
for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do
  cp "$base/$f" "$dst/minilm/"
done
if [ ! -f "$dst/minilm/model.f16.safetensors" ] || [ "$base/model.safetensors" -nt "$dst/minilm/model.f16.safetensors" ]; then
  "$py" scripts/gpu/convert_safetensors.py --to f16 "$base/model.safetensors" "$dst/minilm/model.f16.safetensors"
fi

data=datasets/banking77
for f in train.csv test.csv categories.json task.toml; do
  src="$data/$f"
  [ -f "$src" ] || src=../shared/datasets/banking77/$f
  cp "$src" "$dst/banking77/"
done
shared=${DATASETS:-../shared/datasets}
tmp=$(mktemp -d)
mkdir -p "$tmp/mixsnips" "$tmp/routellm" "$tmp/banking77"
cp "$shared/mixsnips/test.jsonl" "$tmp/mixsnips/"
head -n 2000 "$shared/mixsnips/train.jsonl" >"$tmp/mixsnips/train.jsonl"
cp -r "$shared/routellm/mmlu" "$shared/routellm/gsm8k" "$tmp/routellm/"
cp "$dst"/banking77/* "$tmp/banking77/"
tar -C "$tmp" -cJf "$dst/datasets.tar.xz.tmp" . && mv "$dst/datasets.tar.xz.tmp" "$dst/datasets.tar.xz"
rm -rf "$tmp"
echo "packed $dst: $(du -sh --apparent-size "$dst" | cut -f1) (carry limit 64 MiB, working tree included)" >&2
