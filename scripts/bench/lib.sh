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
