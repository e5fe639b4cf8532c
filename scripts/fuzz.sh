#!/usr/bin/env bash
# Fuzzes the peer-link frame decoder for a bounded time (not part of CI).
#   scripts/fuzz.sh [SECONDS]   (default 60)
# Needs a nightly toolchain and cargo-fuzz (installed here when missing). Starts from the kept
# regression inputs in fuzz/regressions/frame_decode; a crash is written to fuzz/artifacts/ —
# copy it into fuzz/regressions/frame_decode/ once fixed, so `cargo test` replays it forever
# (tests/session_fuzz_regressions.rs).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
mkdir -p corpus/frame_decode
cp -n regressions/frame_decode/* corpus/frame_decode/ 2>/dev/null || true
exec cargo +nightly fuzz run frame_decode corpus/frame_decode -- \
  -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=1024
