#!/usr/bin/env bash
# Figures for the README (not a test; timings are never asserted):
#   1. requests/s of the demo app's GET /count through the proxy, 3 members, one session per
#      wrk connection, for store memory / replicated async / replicated sync / redis (one local
#      redis-server started here, no persistence), all in the same run;
#   2. bytes of memory per stored session at 100k sessions of 1 KiB (memory store, one member:
#      RSS growth / sessions).
# Everything on 127.0.0.1; every process started here is stopped by PID.
#   DURATION=10s CONNECTIONS=32 SESSIONS=100000 scripts/session-bench.sh
# PER_SESSION=0 skips part 2.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
SESSIONS=${SESSIONS:-100000}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/tether
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }

# Each connection keeps its own session cookie, like a browser.
cat > "$work/session.lua" <<'LUA'
local cookie = nil
request = function()
  local headers = {}
  if cookie then headers["Cookie"] = cookie end
  return wrk.format("GET", "/count", headers)
end
response = function(status, headers, body)
  local c = headers["Set-Cookie"] or headers["set-cookie"]
  if c then cookie = c:match("^([^;]+)") end
end
LUA

echo "## requests/s through the proxy (3 members, $CONNECTIONS connections, $DURATION)"
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >/dev/null &
pids+=("$!")
for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
for mode in "memory sync" "replicated async" "replicated sync" "redis://127.0.0.1:$redis_port sync"; do
  set -- $mode
  port=$(free_port)
  RUST_LOG=error "$bin" demo --listen "127.0.0.1:$port" --members 3 --store "$1" --write-mode "$2" >"$work/demo.out" 2>/dev/null &
  demo=$!; pids+=("$demo")
  wait_http "http://127.0.0.1:$port/count"
  label="$1"; [ "$1" = replicated ] && label="$1 $2"; case "$1" in redis*) label=redis;; esac
  rps=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" -s "$work/session.lua" "http://127.0.0.1:$port/count" | awk '/Requests\/sec/ {print $2}')
  printf '%-18s %s req/s\n' "$label" "$rps"
  kill "$demo"; wait "$demo" 2>/dev/null || true
done

[ "${PER_SESSION:-1}" = 0 ] && exit 0
echo "## memory per session ($SESSIONS sessions of 1 KiB, memory store)"
port=$(free_port)
cat > "$work/m.toml" <<TOML
[member]
clone_id = "b1"
listen = "127.0.0.1:$port"
[session]
store = "memory"
max_sessions = $((SESSIONS + 1000))
TOML
RUST_LOG=error "$bin" member --config "$work/m.toml" 2>/dev/null &
member=$!; pids+=("$member")
wait_http "http://127.0.0.1:$port/_tether/stats"
rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$member/status"; }
before=$(rss)
# No cookie: every request creates one new session holding a 1 KiB attribute.
cat > "$work/fill.lua" <<LUA
local n = 0
local per_thread = math.ceil($SESSIONS / 4)
request = function() return wrk.format("GET", "/count?pad=1024") end
response = function() n = n + 1; if n >= per_thread then wrk.thread:stop() end end
LUA
wrk -t4 -c16 -d120s -s "$work/fill.lua" "http://127.0.0.1:$port/" >/dev/null
after=$(rss)
sessions=$(curl -s "http://127.0.0.1:$port/_tether/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sessions"])')
python3 -c "b=$before; a=$after; n=$sessions; print(f'{n} sessions: RSS {b/2**20:.1f} MiB -> {a/2**20:.1f} MiB, {(a-b)/n:.0f} bytes per session (1024 of them payload)')"
