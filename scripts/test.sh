#!/usr/bin/env bash
# Runs the whole test suite: unit, property and integration tests (real servers on 127.0.0.1),
# plus a build of every benchmark. Installs what the tests need when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# (Dependencies of later tests, such as redis-server, are added here when the tests need them.)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq "${need_apt[@]}"
  fi
fi

cargo build --all-targets --locked 2>/dev/null || cargo build --all-targets
cargo test --all-targets -- --test-threads="${TEST_THREADS:-4}"
