#!/usr/bin/env bash
# Installs a CUDA toolkit from PyPI wheels into .tools/cuda so that
#   cargo build --release --features cuda -p distill-cli
# works on a machine with no system CUDA and no GPU (the default build stays CPU-only and needs none of this).
#
# Why wheels: Debian main ships no CUDA toolkit, but PyPI carries CUDA 13 as `nvidia-*` wheels that unpack into
# one tree (`nvidia/cu13/{bin,include,lib}`) with nvcc, cicc, the runtime headers and the libraries cudarc links.
# Two gaps are filled by hand: cargo links with `-lcublas` etc. and needs unversioned `.so` names, and no wheel
# ships the driver library `libcuda.so`, so we build a link-time stub of it (the GPU machine's driver provides the
# real `libcuda.so.1` at run time).
#
# Usage:  scripts/setup-cuda.sh            # idempotent; re-running only redoes what is missing
#         CUDA_VERSION=13.0 scripts/setup-cuda.sh
#         source .tools/cuda/env.sh && CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda -p distill-cli
#
# CUDA_VERSION must be the CUDA version of the *GPU driver* the binary will run on, not the newest toolkit: PTX from a
# newer nvcc fails to load on an older driver with CUDA_ERROR_UNSUPPORTED_PTX_VERSION. The lent H100/H200 run driver
# 580.x = CUDA 13.0. After changing it, delete the stale kernels (cargo does not notice a new nvcc):
#   rm -rf target-cuda/release/build/candle-kernels-* target-cuda/release/.fingerprint/candle-kernels-*
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

CUDA_VERSION=${CUDA_VERSION:-13.0}        # toolkit major.minor; match the target GPU driver
CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}  # 90 = sm_90a, H100/H200 (set explicitly: there is no GPU to ask here)
prefix=${CUDA_TOOLS_DIR:-$root/.tools/cuda}
major=${CUDA_VERSION%%.*}
minor=${CUDA_VERSION#*.}
cu="$prefix/nvidia/cu$major"
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

wheels=(nvidia-cuda-nvcc nvidia-cuda-cccl nvidia-cuda-runtime nvidia-cuda-crt nvidia-nvvm nvidia-cuda-nvrtc
  nvidia-cublas nvidia-curand)
stamp="$prefix/.installed-$CUDA_VERSION"

# 1. The toolkit wheels, all pinned to one minor version (curand has its own numbering, 10.x; it only needs a
#    CUDA-$major build, which its wheel name encodes, so it is left to pip's resolver within the pinned set).
if [ ! -f "$stamp" ] || [ ! -x "$cu/bin/nvcc" ]; then
  say "installing CUDA $CUDA_VERSION wheels into ${prefix#"$root"/}"
  specs=()
  for w in "${wheels[@]}"; do
    if [ "$w" = nvidia-curand ]; then specs+=("$w"); else specs+=("$w==$CUDA_VERSION.*"); fi
  done
  rm -rf "$prefix" && mkdir -p "$prefix"
  python3 -m pip install --quiet --disable-pip-version-check --no-compile --target "$prefix" "${specs[@]}"
  touch "$stamp"
fi
[ -x "$cu/bin/nvcc" ] || { echo "setup-cuda: no nvcc at $cu/bin/nvcc after install" >&2; exit 1; }
got=$("$cu/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
[ "$got" = "$CUDA_VERSION" ] || { echo "setup-cuda: nvcc is $got, wanted $CUDA_VERSION" >&2; exit 1; }

# 2. Unversioned names for the libraries cargo links by `-l` (the wheels ship only libX.so.N).
for l in cublas cublasLt cudart nvrtc curand; do
  [ -e "$cu/lib/lib$l.so" ] && continue
  real=$(cd "$cu/lib" && ls "lib$l.so."* 2>/dev/null | sort -V | head -n1 || true)
  [ -n "$real" ] || { echo "setup-cuda: lib$l.so.* missing in $cu/lib" >&2; exit 1; }
  ln -sfn "$real" "$cu/lib/lib$l.so"
done

# 3. Link-time stub of the driver library: every cu* function declared in cuda.h, as an empty function, in a
#    shared object whose SONAME is libcuda.so.1, so the binary's DT_NEEDED names the real driver library.
stub="$cu/lib/stubs/libcuda.so"
if [ ! -f "$stub" ]; then
  say "building the link-time stub lib/stubs/libcuda.so"
  mkdir -p "$cu/lib/stubs"
  tmp=$(mktemp -d)
  # Preprocessing expands cuda.h's versioned macros (cuCtxCreate -> cuCtxCreate_v4 …), which are the symbols
  # cudarc's bindings actually reference; collect every identifier that is declared as a function.
  cc -E -P -I"$cu/include" -x c "$cu/include/cuda.h" >"$tmp/cuda.i"
  grep -oE '\bcu[A-Za-z0-9_]+[[:space:]]*\(' "$tmp/cuda.i" | sed -E 's/[[:space:]]*\($//' | sort -u >"$tmp/names"
  # Also the un-suffixed macro names (cudarc looks some of them up by their plain name).
  grep -oE '^#define[[:space:]]+cu[A-Za-z0-9_]+[[:space:]]+cu[A-Za-z0-9_]+' "$cu/include/cuda.h" |
    awk '{print $2}' >>"$tmp/names"
  sort -u "$tmp/names" | awk '{printf "void %s(void) {}\n", $1}' >"$tmp/stub.c"
  cc -shared -fPIC -nostdlib -Wl,-soname,libcuda.so.1 -o "$stub" "$tmp/stub.c"
  ln -sfn libcuda.so "$cu/lib/stubs/libcuda.so.1"
  say "stub exports $(wc -l <"$tmp/stub.c") functions"
  rm -rf "$tmp"
fi

# 4. The build environment, written once for `source`.
cat >"$prefix/env.sh" <<EOF
# source me before: CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda -p distill-cli
export CUDA_HOME="$cu"
export CUDA_ROOT="$cu"
export PATH="$cu/bin:\$PATH"
export LIBRARY_PATH="$cu/lib:$cu/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP
export CUDARC_CUDA_VERSION=${major}0${minor}0
EOF
say "CUDA $CUDA_VERSION ready in ${cu#"$root"/}; now:"
echo "  source ${prefix#"$root"/}/env.sh"
echo "  CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda -p distill-cli"
