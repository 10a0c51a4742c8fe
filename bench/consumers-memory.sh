#!/usr/bin/env bash
# Memory of the consumer store's in-memory copy: the resident size of a gateway (release build,
# `consumers-redis` profile) whose store holds 0, then N consumers (seeded by
# bench/seed-consumers.sh into a throwaway Redis), after its first load.
#   bench/consumers-memory.sh [N=100000] [REDIS_PORT=6392]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
n="${1:-100000}"
port="${2:-6392}"
redis-server --port "$port" --save '' --appendonly no --daemonize yes >/dev/null
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true' EXIT
sleep 0.5
rss_with() {
  "$here/seed-consumers.sh" "$port" "$1" >/dev/null
  local log; log="$(mktemp)"
  RUST_LOG=info PORTICO_BENCH_REDIS_PORT="$port" PORTICO_BENCH_PROFILE=consumers-redis \
    "$here/start-gateway.sh" 0 9 2>"$log" &
  local pid=$!
  for _ in $(seq 1 100); do grep -q "listening on" "$log" 2>/dev/null && break; sleep 0.1; done
  sleep 1
  # start-gateway.sh execs the gateway: $pid is the gateway.
  local kib; kib="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$log"
  echo "$kib"
}
empty="$(rss_with 1)"
full="$(rss_with "$n")"
echo "RSS with 1 stored consumer: ${empty} KiB; with ${n}: ${full} KiB; $(( (full - empty) / 1024 )) MiB more, about $(( (full - empty) * 1024 / n )) bytes per consumer"
