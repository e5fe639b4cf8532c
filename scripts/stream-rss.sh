#!/usr/bin/env bash
# Streams a 100 MiB upload and a 100 MiB download through the release proxy and prints the
# proxy's peak RSS (VmHWM). Everything on 127.0.0.1; every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${MIB:-100}
cargo build --release --quiet
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
member_port=$(free_port); proxy_port=$(free_port)

# A member that counts what it is sent and streams what it is asked for, without holding it.
cat > "$work/member.py" <<'PY'
import hashlib, http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        left = int(self.headers.get("Content-Length", "0")); h = hashlib.sha256(); n = 0
        while left:
            b = self.rfile.read(min(left, 1 << 16)); h.update(b); n += len(b); left -= len(b)
        body = f"{n} {h.hexdigest()}".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_GET(self):
        n = int(self.path.rsplit("/", 1)[-1]); chunk = b"x" * (1 << 16)
        self.send_response(200); self.send_header("Content-Length", str(n)); self.end_headers()
        while n:
            k = min(n, len(chunk)); self.wfile.write(chunk[:k]); n -= k
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$work/member.py" "$member_port" & pids+=($!)
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$member_port/0" && break; sleep 0.1; done

cat > "$work/tether.toml" <<TOML
[proxy]
listen = ["127.0.0.1:$proxy_port"]
workers = 1
post_size_limit = "1GiB"
[[route]]
cluster = "app"
[cluster.app]
[[cluster.app.member]]
name = "m1"
clone_id = "c1"
address = "127.0.0.1:$member_port"
TOML
RUST_LOG=warn "${CARGO_TARGET_DIR:-target}/release/tether" proxy --config "$work/tether.toml" & proxy_pid=$!; pids+=($proxy_pid)
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$proxy_port/0" && break; sleep 0.1; done
rss() { awk '/VmRSS|VmHWM/ {printf "%s %s kB  ", $1, $2}' "/proc/$proxy_pid/status"; echo; }
echo "idle:            $(rss)"

head -c $((MIB << 20)) /dev/urandom > "$work/upload"
want="$(stat -c %s "$work/upload") $(sha256sum "$work/upload" | cut -d' ' -f1)"
got=$(curl -s --data-binary @"$work/upload" -H 'Content-Type: application/octet-stream' "http://127.0.0.1:$proxy_port/upload")
[ "$got" = "$want" ] || { echo "upload corrupted: got '$got' want '$want'"; exit 1; }
echo "after ${MIB} MiB up:   $(rss)"

n=$(curl -s "http://127.0.0.1:$proxy_port/$((MIB << 20))" | wc -c)
[ "$n" -eq $((MIB << 20)) ] || { echo "download short: $n bytes"; exit 1; }
echo "after ${MIB} MiB down: $(rss)"
