#!/usr/bin/env bash
# Runs the whole test suite: unit, property and integration tests (real servers on 127.0.0.1),
# plus a build of every benchmark. Installs what the tests need when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# The Redis tests (tests/redis_*.rs) start real redis-server processes; the cluster test forms
# the cluster with redis-cli (package redis-tools).
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v redis-cli >/dev/null || need_apt+=(redis-tools)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq "${need_apt[@]}"
  fi
fi

# The thread count goes through the environment: criterion's bench binaries (built and run
# once in test mode by --all-targets) take no libtest flags.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
cargo test --all-targets --locked
