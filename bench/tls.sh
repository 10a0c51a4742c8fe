#!/usr/bin/env bash
# TLS termination, Portico beside nginx, in one run: both serve the same self-signed ECDSA P-256
# certificate on 127.0.0.1 and proxy to the same origin (../shared/bench/origin/origin.c, HTTP/1.1,
# pooled upstream connections). Same layout as ../shared/bench: the proxy under test pinned to CPU 1
# with one worker, wrk (1 thread, 50 connections) and the origin on CPU 0.
#
# Scenarios: `keepalive` (GET /small over kept-alive TLS connections) and `handshake`
# (`Connection: close`: a new TCP connection and a full TLS handshake per request; wrk does not
# resume sessions). Rows alternate within each round; the report gives the median of the rounds.
# CPU µs/req = utime+stime of the proxy's process tree (/proc/PID/stat) / requests completed.
#
# Usage: bench/tls.sh [ROUNDS (3)] [SECONDS per run (5)]. Build first: cargo build --release.
# Builds nothing else but the origin (gcc), and leaves logs in /tmp/portico-tls-bench.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rounds="${1:-3}"
duration="${2:-5}"
bin="${PORTICO_BENCH_BIN:-$here/../target/release/portico}"
work=/tmp/portico-tls-bench
rm -rf "$work" && mkdir -p "$work/nginx"
[ -x "$bin" ] || { echo "no $bin: cargo build --release first" >&2; exit 1; }

origin_src="$here/../../shared/bench/origin/origin.c"
[ -f "$origin_src" ] || origin_src=/work/shared/bench/origin/origin.c
gcc -O2 -o "$work/origin" "$origin_src"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin_port=$(free_port); nginx_port=$(free_port); portico_port=$(free_port)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:$origin_port; keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port ssl;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX

cat > "$work/portico.yaml" <<YAML
listen: ["127.0.0.1:$(free_port)"]
workers: 1
access_log: {enabled: false}
log_level: warn
tls:
  listen: ["127.0.0.1:$portico_port"]
  certificates:
    - {cert: "$work/cert.pem", key: "$work/key.pem"}
services:
  origin: {targets: [{url: "http://127.0.0.1:$origin_port"}]}
routes:
  - {name: all, service: origin}
YAML

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
taskset -c 0 "$work/origin" "$origin_port" & pids+=($!)
taskset -c 1 nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" & pids+=($!); nginx_pid=$!
taskset -c 1 "$bin" run --config "$work/portico.yaml" 2>"$work/portico.log" & pids+=($!); portico_pid=$!

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
wait_port "$origin_port"; wait_port "$nginx_port"; wait_port "$portico_port"

# utime+stime (clock ticks) of a process and its children.
ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)

run() { # row port scenario -> "requests req/s µs/req"
  local pid=$1 port=$2 scenario=$3 hdr=()
  [ "$scenario" = handshake ] && hdr=(-H "Connection: close")
  taskset -c 0 wrk -t1 -c50 -d1s "${hdr[@]}" "https://localhost:$port/small" >/dev/null 2>&1 || true
  local before after out reqs rps
  before=$(ticks "$pid")
  out=$(taskset -c 0 wrk -t1 -c50 -d"${duration}s" "${hdr[@]}" "https://localhost:$port/small" 2>&1)
  after=$(ticks "$pid")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  if echo "$out" | grep -q "Non-2xx\|Socket errors"; then echo "$out" | grep "Non-2xx\|Socket errors" >&2; fi
  awk -v t=$((after - before)) -v hz="$hz" -v r="$reqs" -v rps="$rps" \
    'BEGIN { printf "%d %.0f %.1f\n", r, rps, t / hz * 1e6 / r }'
}

results="$work/results.txt"; : > "$results"
for round in $(seq "$rounds"); do
  for scenario in keepalive handshake; do
    # Alternate the order of the rows each round so drift hits both alike.
    if [ $((round % 2)) = 1 ]; then order="nginx portico"; else order="portico nginx"; fi
    for row in $order; do
      if [ "$row" = nginx ]; then r=$(run "$nginx_pid" "$nginx_port" "$scenario")
      else r=$(run "$portico_pid" "$portico_port" "$scenario"); fi
      echo "$round $scenario $row $r" | tee -a "$results" >&2
    done
  done
done

echo
echo "| scenario | row | req/s (median) | CPU µs/req (median) | CPU µs/req per round |"
echo "|---|---|---|---|---|"
for scenario in keepalive handshake; do
  for row in nginx portico; do
    awk -v s="$scenario" -v w="$row" '$2 == s && $3 == w {print $5, $6}' "$results" | sort -n -k2 | awk -v s="$scenario" -v w="$row" '
      { rps[NR] = $1; us[NR] = $2; all = all (NR > 1 ? ", " : "") $2 }
      END { m = int((NR + 1) / 2); printf "| %s | %s | %s | %s | %s |\n", s, w, rps[m], us[m], all }'
  done
done
