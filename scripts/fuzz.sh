#!/usr/bin/env bash
# Fuzzes the peer-link frame decoder for a bounded time (not part of CI).
#   scripts/fuzz.sh [SECONDS]   (default 60)
# Runs cargo-fuzz (installed here from crates.io when missing) on the stable toolchain:
# RUSTC_BOOTSTRAP=1 unlocks the unstable flags it passes (-Zsanitizer=address and friends), so
# no nightly is needed. Starts from the kept regression inputs in fuzz/regressions/frame_decode;
# a crash is written to fuzz/artifacts/frame_decode/ — once fixed, copy it into
# fuzz/regressions/frame_decode/ so `cargo test` replays it forever
# (tests/session_fuzz_regressions.rs). fuzz/target, corpus and artifacts stay out of git.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz.sh: SECONDS must be a positive whole number, got '$seconds'" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
mkdir -p corpus/frame_decode
cp -n regressions/frame_decode/* corpus/frame_decode/ 2>/dev/null || true
export RUSTC_BOOTSTRAP=1
exec cargo fuzz run frame_decode corpus/frame_decode -- \
  -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=1024
