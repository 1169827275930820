# Shared by benches: source it from the repository root.

# The distill binary a bench runs: $DISTILL_BIN when set (built elsewhere, e.g. carried to a GPU
# machine), else a fresh release build. Prints its absolute path (benches cd into work dirs).
distill_bin() {
  if [ -n "${DISTILL_BIN:-}" ]; then
    realpath "$DISTILL_BIN"
  else
    cargo build --release --quiet -p distill-cli >&2 && realpath target/release/distill
  fi
}

# Processes a bench starts in the background: append each pid to `pids`; `trap stop_started EXIT`
# stops them all however the bench ends.
pids=()
stop_started() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

# Prints the first match of REGEX in FILE (a server's announced URL), waiting up to 120 s; exits
# when process PID dies first.   wait_url FILE REGEX PID
wait_url() {
  local deadline=$((SECONDS + 120))
  until grep -m1 -oE "$2" "$1" 2>/dev/null; do
    kill -0 "$3" 2>/dev/null || { cat "$1" >&2; echo "process $3 exited early" >&2; exit 1; }
    [ $SECONDS -lt $deadline ] || { cat "$1" >&2; echo "timed out waiting for $2" >&2; exit 1; }
    sleep 0.1
  done
}
