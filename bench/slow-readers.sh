#!/usr/bin/env bash
# Normal clients beside slow readers: wrk's latency on /small with and without 200 clients that
# asked for an 8 MiB file and read nothing more, and the gateway's RSS in each phase.
#
#   bench/slow-readers.sh [READERS] [SECONDS]      (defaults: 200 readers, 10 s of wrk per phase)
#
# Uses target/release/portico (or PORTICO_BENCH_BIN), the shared bench origin for /small (built
# with gcc into /tmp/portico-slow) and python3's http.server for the big file. Loopback only;
# every process it starts is stopped on exit.
set -euo pipefail
readers="${1:-200}"
seconds="${2:-10}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${PORTICO_BENCH_BIN:-$here/../target/release/portico}"
work=/tmp/portico-slow
mkdir -p "$work/files"
command -v wrk >/dev/null || { echo "wrk is needed: ../shared/bench/setup.sh installs it" >&2; exit 1; }
[ -x "$work/origin" ] || gcc -O2 -o "$work/origin" "$here/../../shared/bench/origin/origin.c"
[ -f "$work/files/big.bin" ] || head -c $((8 * 1024 * 1024)) /dev/zero > "$work/files/big.bin"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin_port=$(free_port); files_port=$(free_port); gw_port=$(free_port); admin_port=$(free_port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$work/origin" "$origin_port" & pids+=($!)
python3 -m http.server "$files_port" --bind 127.0.0.1 --directory "$work/files" >/dev/null 2>&1 & pids+=($!)
cat > "$work/portico.yaml" <<EOF
listen: ["127.0.0.1:$gw_port"]
workers: 1
admin: {listen: "127.0.0.1:$admin_port"}
services:
  small: {targets: [{url: "http://127.0.0.1:$origin_port"}]}
  files: {targets: [{url: "http://127.0.0.1:$files_port"}], timeouts: {request: 120s, idle: 120s}}
routes:
  - {name: files, service: files, match: {path: /files}, rewrite: {strip_prefix: /files}, timeout: 120s}
  - {name: small, service: small}
EOF
"$bin" run --config "$work/portico.yaml" >"$work/gateway.log" 2>&1 & gw=$!; pids+=($gw)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$gw_port/small" >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$gw/status"; }
p99() { wrk -t1 -c50 -d"${seconds}s" --latency "http://127.0.0.1:$gw_port/small" | awk '/ 99%/ {print $2} /Requests\/sec/ {print $2}' | paste -sd' '; }

echo "phase            gateway RSS (KiB)   wrk /small: p99  req/s"
echo "quiet            $(rss)              $(p99)"
python3 - "$gw_port" "$readers" "$work/readers.ready" <<'EOF' & pids+=($!)
import socket, sys, time
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: slow.example\r\n\r\n")
    assert b" 200 " in s.recv(64)
    held.append(s)
open(ready, "w").close()
time.sleep(3600)
EOF
rm -f "$work/readers.ready"
for _ in $(seq 600); do [ -f "$work/readers.ready" ] && break; sleep 0.1; done
[ -f "$work/readers.ready" ] || { echo "the slow readers did not connect" >&2; exit 1; }
sleep 1
echo "$readers slow readers $(rss)              $(p99)"
