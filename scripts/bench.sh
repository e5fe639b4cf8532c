#!/usr/bin/env bash
# Load comparison of tether, nginx and HAProxy as session-aware proxies (issue 5).
#
# Three nginx members (one worker each; every answer carries X-Member: c1|c2|c3) sit behind
# three proxies configured alike: round robin when sessionless, sticky by the clone id at the
# end of JSESSIONID. Each proxy runs one worker on core 0 (taskset -c 0); wrk, the members and
# the idle-connection client share core 1. Before measuring, every proxy must route sticky
# requests to the member the cookie names and spread sessionless ones over all three.
#
# Workloads, run in interleaved rounds (A B C, B C A, C A B, ...):
#   get     small GET, sessionless           sticky  small GET, JSESSIONID=0000…:c2
#   post    POST with a 4 KiB body           1m      GET of a 1 MiB body
#   close   a new connection per request     paced   small GET, each connection pausing
#                                                     --pace-ms between requests (fixed load)
# Per run: req/s, p50/p99 latency (wrk), the proxy's CPU time (utime+stime of its processes
# from /proc), hence requests per proxy CPU second. Then each proxy's peak RSS under load
# (VmHWM) and, on a fresh process, its RSS while holding --idle idle keep-alive connections.
#
# Usage: scripts/bench.sh [--smoke] [--rounds N] [--duration SECONDS] [--connections N]
#                         [--workers 1|2] [--idle N] [--pace-ms MS] [--out DIR]
#                         [--systems tether,nginx,haproxy] [--workloads get,sticky,post,1m,close,paced]
#   --smoke      1 round of 1 s per run and 1,000 idle connections (well under a minute once
#                built); exits 0 only if every proxy routed sticky correctly and answered 200s.
#   --workers 2  tether workers = 2, nginx worker_processes 2, HAProxy nbthread 2; nothing pinned.
#   --quiet-wait S  before each run, wait up to S seconds (default 20, 0 with --smoke) for other
#                work on the machine to stop using CPU; each run also records the CPU time used by
#                processes other than the proxy, the members and wrk ("bg CPU" in the table).
#   --baseline BIN  also measures BIN, an earlier tether build, as the system "before" (same
#                config, same rounds), so a change is judged by before/after ratios from one run.
#   --out DIR    keeps the raw results (results.tsv, rss.tsv, the table, wrk output) in DIR.
#   --systems, --workloads  a subset, e.g. to profile one proxy on one workload (--idle 0 skips
#                the idle-connection test).
# Everything listens on 127.0.0.1 on ports picked at run time; every process started here is
# stopped by PID on exit and the temporary directory removed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
here=$root/scripts/bench

rounds=3 duration=10 connections=50 workers=1 idle=10000 pace_ms=5 smoke=0 out="" quiet_wait=20
baseline="" systems_arg="tether,nginx,haproxy" workloads_arg="get,sticky,post,1m,close,paced"
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) smoke=1 rounds=1 duration=1 idle=1000 quiet_wait=0; shift ;;
    --quiet-wait) quiet_wait=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --idle) idle=$2; shift 2 ;;
    --pace-ms) pace_ms=$2; shift 2 ;;
    --systems) systems_arg=$2; shift 2 ;;
    --workloads) workloads_arg=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$rounds" "$duration" "$connections" "$pace_ms"; do
  [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || { echo "expected a positive number, got '$n'" >&2; exit 2; }
done
[[ $idle =~ ^[0-9]+$ ]] || { echo "--idle takes a number, got '$idle'" >&2; exit 2; }
[[ $quiet_wait =~ ^[0-9]+$ ]] || { echo "--quiet-wait takes a number, got '$quiet_wait'" >&2; exit 2; }
[[ $workers == 1 || $workers == 2 ]] || { echo "--workers is 1 or 2" >&2; exit 2; }
IFS=, read -r -a systems <<< "$systems_arg"
if [ -n "$baseline" ]; then
  [ -x "$baseline" ] || { echo "--baseline: $baseline is not an executable" >&2; exit 2; }
  systems+=(before)
fi
for s in "${systems[@]}"; do
  [[ $s == before ]] && continue
  [[ $s == tether || $s == nginx || $s == haproxy ]] || { echo "unknown system $s" >&2; exit 2; }
done
IFS=, read -r -a workloads <<< "$workloads_arg"
for w in "${workloads[@]}"; do
  [[ $w =~ ^(get|sticky|post|1m|close|paced)$ ]] || { echo "unknown workload $w" >&2; exit 2; }
done
cookie="JSESSIONID=0000abcdefghijklmnop:c2"

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() { echo "FAIL: $*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------------
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  sudo=(); [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  log "installing ${need[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi
log "building tether (release)"
cargo build --release --quiet || die "cargo build --release failed"
tether_bin=${CARGO_TARGET_DIR:-$root/target}/release/tether

# --- layout ------------------------------------------------------------------------------------
cores=$(nproc)
if [ "$workers" -eq 1 ]; then
  [ "$cores" -ge 2 ] || log "warning: 1 core only: proxies and load share it"
  proxy_pin=(taskset -c 0)
  load_pin=(taskset -c $((cores > 1 ? 1 : 0)))
  wrk_threads=1
  layout="1 worker per proxy on core 0; wrk and members on core 1"
else
  proxy_pin=() load_pin=() wrk_threads=2
  layout="2 workers per proxy, nothing pinned"
fi

# Idle connections need a descriptor each in the proxy and in the client, and HAProxy reserves
# two per connection (client and member side) up to its maxconn.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
[ "$nofile" = unlimited ] && nofile=1048576
if [ "$nofile" -ge 30000 ]; then nofile=30000; fi
if [ $((2 * (idle + 200) + 500)) -gt "$nofile" ]; then
  idle=$(((nofile - 500) / 2 - 200))
  idle=$((idle / 100 * 100))
  log "warning: open-file limit $nofile (HAProxy needs 2 per connection): holding $idle idle connections"
fi
# The load runs need room of their own (clients, member pools, connections closing), even with
# --idle 0: at worker_connections nginx answers errors, and HAProxy slows down at maxconn.
maxconn=$((idle + 200 > 2000 ? idle + 200 : 2000))
[ $((2 * maxconn + 500)) -le "$nofile" ] || die "open-file limit $nofile is too low for the load runs"

work=$(mktemp -d /tmp/tether-bench.XXXXXX)
chmod 755 "$work" # nginx workers may run as another user
pids=()
declare -A proxy_pid=()
stop_pid() { # stops a process started here (TERM, then KILL after 5 s) and forgets it
  local pid=$1 i rest=()
  for i in "${pids[@]}"; do [ "$i" = "$pid" ] || rest+=("$i"); done
  pids=("${rest[@]}")
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${pids[@]}"; do stop_pid "$pid"; done
  if [ -n "$out" ] && [ -d "$work" ]; then
    mkdir -p "$out" && cp -r "$work"/results.tsv "$work"/rss.tsv "$work"/table.txt "$work"/wrk "$out"/ 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE # e.g. `scripts/bench.sh | head`: still stop everything

read -r port_c1 port_c2 port_c3 port_tether port_nginx port_haproxy port_before < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(7)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
declare -A port=([c1]=$port_c1 [c2]=$port_c2 [c3]=$port_c3
  [tether]=$port_tether [nginx]=$port_nginx [haproxy]=$port_haproxy [before]=$port_before)

user_line=""; [ "$(id -u)" -eq 0 ] && user_line="user root;"
render() { # template output [KEY=value ...]
  local template=$1 output=$2 kv script=()
  shift 2
  for kv in "$@"; do script+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${script[@]}" "$template" > "$output"
}

# --- members -----------------------------------------------------------------------------------
head -c $((1 << 20)) /dev/zero > "$work/1m.bin"
head -c 4096 /dev/zero | tr '\0' x > "$work/post4k"
chmod 644 "$work/1m.bin" "$work/post4k"
wait_ready() { # name port pid
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$3" 2>/dev/null || { cat "$work/$1/log" "$work/$1/error.log" >&2 2>/dev/null || true; die "$1 exited at start"; }
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$2/" && return 0
    sleep 0.1
  done
  die "$1 does not answer on port $2"
}
member_pids=()
for m in c1 c2 c3; do
  mkdir -p "$work/$m"
  render "$here/member-nginx.conf" "$work/$m/nginx.conf" NAME="$m" PORT="${port[$m]}" \
    DIR="$work/$m" USER="$user_line"
  ln -s "$work/1m.bin" "$work/$m/1m.bin"
  "${load_pin[@]}" nginx -p "$work/$m" -e "$work/$m/error.log" -c "$work/$m/nginx.conf" \
    > "$work/$m/log" 2>&1 &
  pids+=($!)
  member_pids+=($!)
  wait_ready "$m" "${port[$m]}" $!
done
# The member reads a POST body: the same keep-alive connection then carries the next request.
got=$(curl -s -o /dev/null -w '%{http_code} ' --data-binary @"$work/post4k" \
  "http://127.0.0.1:$port_c1/post" --next -s -o /dev/null -w '%{http_code} %{num_connects}' \
  "http://127.0.0.1:$port_c1/")
[ "$got" = "200 200 0" ] || die "member c1: POST then GET on one connection gave '$got'"

# --- proxies -----------------------------------------------------------------------------------
start_proxy() { # system
  local s=$1 dir=$work/$1
  mkdir -p "$dir"
  local vars=(PORT="${port[$s]}" C1="$port_c1" C2="$port_c2" C3="$port_c3" DIR="$dir"
    WORKERS="$workers" NOFILE="$nofile" MAXCONN="$maxconn" USER="$user_line")
  case $s in
    tether | before)
      local bin=$tether_bin
      [ "$s" = before ] && bin=$baseline
      render "$here/proxy-tether.toml" "$dir/tether.toml" "${vars[@]}"
      RUST_LOG=warn "${proxy_pin[@]}" "$bin" proxy --config "$dir/tether.toml" \
        > "$dir/log" 2>&1 &
      ;;
    nginx)
      render "$here/proxy-nginx.conf" "$dir/nginx.conf" "${vars[@]}"
      "${proxy_pin[@]}" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" > "$dir/log" 2>&1 &
      ;;
    haproxy)
      render "$here/proxy-haproxy.cfg" "$dir/haproxy.cfg" "${vars[@]}"
      "${proxy_pin[@]}" haproxy -db -f "$dir/haproxy.cfg" > "$dir/log" 2>&1 &
      ;;
  esac
  proxy_pid[$s]=$!
  pids+=($!)
  wait_ready "$s" "${port[$s]}" $!
}
stop_proxy() { stop_pid "${proxy_pid[$1]}"; }

probe() { # curl arguments -> "STATUS MEMBER"
  curl -s -o /dev/null -D - --max-time 5 "$@" | tr -d '\r' |
    awk 'NR == 1 { s = $2 } tolower($1) == "x-member:" { m = $2 } END { print s, m }'
}
verify() { # system: sticky routing, sessionless spread, POST and 1 MiB through the proxy
  local s=$1 url=http://127.0.0.1:${port[$1]} clone i got
  for clone in c2 c1 c3; do
    for ((i = 0; i < 3; i++)); do
      got=$(probe -H "Cookie: JSESSIONID=0000abcdefghijklmnop:$clone" "$url/")
      [ "$got" = "200 $clone" ] || die "$s: sticky request for $clone answered '$got'"
    done
  done
  declare -A seen=()
  for ((i = 0; i < 9; i++)); do
    got=$(probe "$url/")
    [ "${got%% *}" = 200 ] || die "$s: sessionless request answered '$got'"
    seen[${got#* }]=1
  done
  [ -n "${seen[c1]:-}" ] && [ -n "${seen[c2]:-}" ] && [ -n "${seen[c3]:-}" ] ||
    die "$s: 9 sessionless requests reached only: ${!seen[*]}"
  got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --data-binary @"$work/post4k" "$url/post")
  [ "$got" = 200 ] || die "$s: POST 4 KiB answered $got"
  got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 5 "$url/1m")
  [ "$got" = "200 1048576" ] || die "$s: GET /1m answered '$got'"
  log "$s routes sticky requests to their clone and spreads sessionless ones over c1 c2 c3"
}

for s in "${systems[@]}"; do start_proxy "$s"; done
for s in "${systems[@]}"; do verify "$s"; done

# --- measurement -------------------------------------------------------------------------------
tree() { # pid and its descendants
  local c
  echo "$1"
  for c in $(pgrep -P "$1" || true); do tree "$c"; done
}
cpu_ticks() { # utime + stime of a process tree, in clock ticks
  local p t=0 u
  for p in $(tree "$1"); do
    u=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)
    t=$((t + u))
  done
  echo "$t"
}
status_kib() { # pid field: a /proc status field summed over the process tree
  local p t=0 v
  for p in $(tree "$1"); do
    v=$(awk -v f="$2:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
hz=$(getconf CLK_TCK)
busy_ticks() { # CPU ticks spent by the whole machine (all but idle and iowait)
  awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}
members_ticks() {
  local p t=0
  for p in "${member_pids[@]}"; do t=$((t + $(cpu_ticks "$p"))); done
  echo "$t"
}
wait_quiet() { # waits (at most --quiet-wait s) until the machine is idle for a second
  local i b0 b1 waited=0
  for ((i = 0; i < quiet_wait; i++)); do
    b0=$(busy_ticks); sleep 1; b1=$(busy_ticks)
    [ $((b1 - b0)) -gt $((hz / 10)) ] || break
    waited=$((waited + 1))
  done
  if [ "$waited" -gt 0 ]; then
    log "waited ${waited} s for other work on the machine to stop (last second: $((b1 - b0)) ticks busy)"
  fi
  return 0
}

mkdir -p "$work/wrk"
for f in plain post paced; do cat "$here/wrk/$f.lua" "$here/wrk/report.lua" > "$work/wrk-$f.lua"; done
results=$work/results.tsv
printf 'round\tworkload\tsystem\trequests\tduration_s\tbytes\tp50_us\tp99_us\tcpu_s\terr_socket\terr_status\tbg_cpu_s\n' > "$results"

run_wrk() { # round workload system seconds [record]
  local r=$1 w=$2 s=$3 secs=$4 script=plain path=/ extra=()
  case $w in
    sticky) extra=(-H "Cookie: $cookie") ;;
    post) script=post path=/post ;;
    1m) path=/1m ;;
    close) extra=(-H "Connection: close") ;;
    paced) script=paced ;;
  esac
  local outf=$work/wrk/$r-$w-$s.txt pid=${proxy_pid[$s]}
  local before after busy0 busy1 members0 members1 TIMEFORMAT='%3U %3S'
  [ "${5:-}" = record ] && wait_quiet
  busy0=$(busy_ticks) members0=$(members_ticks) before=$(cpu_ticks "$pid")
  { time BENCH_PACE_MS=$pace_ms "${load_pin[@]}" wrk -t"$wrk_threads" -c"$connections" \
    -d"${secs}s" --timeout 5s --latency -s "$work/wrk-$script.lua" "${extra[@]}" \
    "http://127.0.0.1:${port[$s]}$path" > "$outf" 2>&1; } 2> "$outf.time" || true
  after=$(cpu_ticks "$pid") members1=$(members_ticks) busy1=$(busy_ticks)
  [ "${5:-}" = record ] || return 0
  # CPU that neither the proxy, the members nor wrk used: other work disturbing the run.
  local bg
  bg=$(awk -v busy=$((busy1 - busy0)) -v ours=$((after - before + members1 - members0)) -v hz="$hz" \
    '{ bg = (busy - ours) / hz - $1 - $2; printf "%.2f", bg < 0 ? 0 : bg }' "$outf.time")
  local line k v kv
  declare -A res=([requests]=0 [duration_us]=1 [bytes]=0 [p50_us]=0 [p99_us]=0 [err_connect]=0
    [err_read]=0 [err_write]=0 [err_status]=0 [err_timeout]=0)
  line=$(grep '^RESULT ' "$outf" || true)
  [ -n "$line" ] || log "wrk printed no result for $s $w: $(tail -n 3 "$outf" | tr '\n' ' ')"
  for kv in ${line#RESULT }; do k=${kv%%=*} v=${kv#*=}; res[$k]=$v; done
  local cpu dur sock
  cpu=$(awk -v t=$((after - before)) -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }')
  dur=$(awk -v d="${res[duration_us]}" 'BEGIN { printf "%.3f", d / 1e6 }')
  sock=$((res[err_connect] + res[err_read] + res[err_write] + res[err_timeout]))
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$w" "$s" "${res[requests]}" \
    "$dur" "${res[bytes]}" "${res[p50_us]}" "${res[p99_us]}" "$cpu" "$sock" "${res[err_status]}" "$bg" \
    >> "$results"
  log "$(awk -v n="${res[requests]}" -v d="$dur" -v c="$cpu" -v p99="${res[p99_us]}" \
    -v tag="round $r $w $s" -v e="$sock/${res[err_status]}" -v bg="$bg" 'BEGIN {
      printf "%s: %.0f req/s, p99 %.3f ms, proxy CPU %.2f s = %.0f req per CPU-s, errors %s, bg CPU %.2f s",
        tag, n / d, p99 / 1000, c, (c > 0 ? n / c : 0), e, bg }')"
}

log "$layout; ${rounds} round(s) x ${duration} s x ${#workloads[@]} workloads x ${#systems[@]} systems, $connections connections"
for s in "${systems[@]}"; do run_wrk 0 get "$s" $((smoke ? 1 : 3)); done # warm pools and caches
n=${#systems[@]}
for ((r = 1; r <= rounds; r++)); do
  for w in "${workloads[@]}"; do
    for ((k = 0; k < n; k++)); do
      run_wrk "$r" "$w" "${systems[$(((k + r - 1) % n))]}" "$duration" record
    done
  done
done

# --- memory ------------------------------------------------------------------------------------
declare -A hwm=()
for s in "${systems[@]}"; do hwm[$s]=$(status_kib "${proxy_pid[$s]}" VmHWM); done
rss=$work/rss.tsv
printf 'system\thwm_kib\trss_before_kib\trss_after_kib\topened\twanted\n' > "$rss"
for s in "${systems[@]}"; do
  if [ "$idle" -eq 0 ]; then
    printf '%s\t%s\t0\t0\t0\t0\n' "$s" "${hwm[$s]}" >> "$rss"
    continue
  fi
  # A fresh process, so what the load left in its allocator does not hide the connections' cost.
  stop_proxy "$s"
  start_proxy "$s"
  sleep 0.5
  before=$(status_kib "${proxy_pid[$s]}" VmRSS)
  ready=$work/idle-$s.ready
  "${load_pin[@]}" python3 "$here/idle_conns.py" "${port[$s]}" "$idle" "$ready" 300 \
    > "$work/idle-$s.log" 2>&1 &
  ipid=$!
  pids+=($ipid)
  for ((i = 0; i < 1800; i++)); do
    [ -f "$ready" ] && break
    kill -0 "$ipid" 2>/dev/null || break
    sleep 0.1
  done
  [ -f "$ready" ] || die "idle client for $s: $(cat "$work/idle-$s.log")"
  sleep 1
  after=$(status_kib "${proxy_pid[$s]}" VmRSS)
  read -r _ opened _ failed _ < "$ready"
  stop_pid "$ipid"
  [ "$failed" -eq 0 ] || log "$s: $failed of $idle idle connections failed: $(cat "$ready")"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "${hwm[$s]}" "$before" "$after" "$opened" "$idle" >> "$rss"
  log "$s holds $opened idle connections: RSS $before -> $after KiB"
done

# --- report ------------------------------------------------------------------------------------
title="$layout; $connections connections, ${duration} s per run, paced: ${pace_ms} ms between requests per connection"
status=0
python3 "$here/report.py" "$results" "$rss" "$title" | tee "$work/table.txt" || status=$?
if [ "$status" -ne 0 ]; then die "some runs got non-2xx answers or completed no request"; fi
[ "$smoke" -eq 1 ] && echo "smoke: every proxy routed sticky requests correctly and answered 200s"
exit 0
