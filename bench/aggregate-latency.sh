#!/usr/bin/env bash
# Latency an aggregate adds: wrk against one gateway (profile `aggregate`, one worker) for a
# proxied `GET /small`, an aggregate of three concurrent calls (`/agg`) and of three calls in
# sequence (`/agg-chain`), all to the shared bench's C origin. Prints p50/p99 per path.
#   bench/aggregate-latency.sh [SECONDS] [CONNECTIONS]     (default 10 s, 10 connections)
# Needs `cargo build --release` and the origin binary (../shared/bench/setup.sh + peers.sh once).
# Wall-clock latency: on a busy machine, say so next to the numbers.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
secs=${1:-10}; conns=${2:-10}
origin_bin="$(ls /tmp/gwbench/bin/gwbench-origin-* 2>/dev/null | head -1)"
[ -x "$origin_bin" ] || { echo "no origin binary: run ../shared/bench/setup.sh and peers.sh once" >&2; exit 1; }
oport=18191; gport=18190
taskset -c 0 "$origin_bin" "$oport" >/dev/null 2>&1 & origin=$!
PORTICO_BENCH_PROFILE=aggregate taskset -c 1 "$here/start-gateway.sh" "$gport" "$oport" >/dev/null 2>&1 & gw=$!
trap 'kill $gw $origin 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$gport/agg" && break; sleep 0.1
done
curl -sf "http://127.0.0.1:$gport/agg-chain" >/dev/null
for path in /small /agg /agg-chain; do
  out="$(taskset -c 0 wrk -t1 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$gport$path")"
  p50=$(awk '$1=="50%"{print $2}' <<<"$out"); p99=$(awk '$1=="99%"{print $2}' <<<"$out")
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/{print $NF}' <<<"$out")
  echo "$path: p50 $p50 p99 $p99 req/s $rps${non2xx:+ non-2xx $non2xx}"
done
