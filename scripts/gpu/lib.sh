# Shared by the scripts that run on a lent GPU machine (scripts/gpu-check.sh, scripts/gpu/students-check.sh):
# unpacking what scripts/gpu/pack-carry.sh carried, and finding the CUDA libraries the binary links.
# Source it after setting: carry (the packed folder), work (a scratch folder), py (python3), out (results),
# dev (cpu|cuda) and defining log/die.

# The binary travels xz-compressed (the carry is limited to 64 MiB); Python's lzma unpacks it anywhere.
gpu_unpack_distill() {
  bin="$work/distill"
  [ -f "$carry/distill.xz" ] || die "no $carry/distill.xz (run scripts/gpu/pack-carry.sh first)"
  "$py" -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" \
    "$carry/distill.xz" "$bin" || die "cannot unpack distill.xz"
  chmod +x "$bin"
}

# The CUDA libraries the binary links dynamically (cublas, cublasLt, curand, cudart, nvrtc of its CUDA major, and
# the driver's libcuda.so.1). Nothing is hard-coded: ask the loader what is missing and search for it.
gpu_find_cuda_libs() {
  local libdirs=() roots site missing hit d lib
  for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do [ -e "$d/libcuda.so.1" ] && libdirs+=("$d"); done
  roots=(${CUDA_LIB_ROOTS:-} /opt/torch/.venv/lib /usr/local/cuda/lib64 /usr/local/cuda/targets /usr/lib/x86_64-linux-gnu /usr/local/lib)
  site=$("$py" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true)
  for d in $site; do roots+=("$d/nvidia"); done
  for d in /usr/local/cuda-*; do [ -d "$d" ] && roots+=("$d"); done
  for _ in 1 2 3; do
    LD_LIBRARY_PATH=$(IFS=:; echo "${libdirs[*]}") ldd "$bin" >"$work/ldd.txt" 2>&1
    missing=$(awk '/not found/ {print $1}' "$work/ldd.txt" | sort -u)
    [ -z "$missing" ] && break
    for lib in $missing; do
      hit=$(find "${roots[@]}" -name "$lib" \( -type f -o -type l \) 2>/dev/null | head -n1)
      [ -n "$hit" ] || continue
      d=$(dirname "$hit")
      case " ${libdirs[*]} " in *" $d "*) ;; *) libdirs+=("$d") ;; esac
    done
  done
  export LD_LIBRARY_PATH=$(IFS=:; echo "${libdirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  grep -E 'cuda|cublas|curand|nvrtc' "$work/ldd.txt" | tee -a "$out/log.txt" >&2
  if grep -q 'not found' "$work/ldd.txt"; then
    die "libraries still missing: $(grep 'not found' "$work/ldd.txt" | tr '\n' ' ')"
  fi
}

# all-MiniLM-L6-v2 travels as f16 and is widened back to f32 here (exact) into $1.
gpu_unpack_base() {
  mkdir -p "$1"
  for f in "$carry"/minilm/*; do
    case "$f" in *.f16.safetensors) ;; *) cp "$f" "$1/" ;; esac
  done
  if [ -f "$carry/minilm/model.f16.safetensors" ]; then
    "$py" scripts/gpu/convert_safetensors.py --to f32 "$carry/minilm/model.f16.safetensors" \
      "$1/model.safetensors" 2>>"$out/log.txt" || die "weight conversion"
  fi
  [ -f "$1/model.safetensors" ] || die "no base weights in $carry/minilm"
}
