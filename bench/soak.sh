#!/usr/bin/env bash
# Soak: mixed load through the release gateway for MINUTES while the config is reloaded (with a
# new revision each time, through the admin API's POST /reload, 200 ms after the previous reload
# answered: about 4 a second) and one WebSocket connection is held open; samples RSS, open fds
# and CPU every 30 s.
#
#   bench/soak.sh MINUTES            # uses target/release/portico, or $PORTICO_BIN
#
# The mix (wrk, one connection per thread, each response checked against its request):
#   /ok         200  proxied to a small origin (the response carries the config revision)
#   /nothing    404  no route
#   /private    401  api_key route, no key
#   /private    200  same route, with the consumer's key
#   /limited    200 or 429  50 requests/s per client; 429 must show up
#   /ws         101  one WebSocket connection for the whole run, an echo every 2 s
# Fails (exit 1) on any unexpected status, any socket error, a reload that is not applied, the
# WebSocket connection closing, the gateway exiting, or RSS growing more than 10 % from the
# first sample after the warm-up (SOAK_WARMUP_SECS, default a quarter of the run, at most 5 min)
# to the last. Everything runs on 127.0.0.1; every process it starts is stopped on exit, and
# the whole run is bounded (MINUTES + 3 min at most).
#
# Environment: SOAK_SAMPLE_SECS (30), SOAK_CONNS (wrk connections, default 8), SOAK_KEEP=1
# (keep the work directory), PORTICO_BIN.
set -uo pipefail

minutes="${1:-}"
if ! [[ "$minutes" =~ ^[0-9]+$ ]] || [ "$minutes" -lt 1 ]; then
  echo "usage: bench/soak.sh MINUTES" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
bin="${PORTICO_BIN:-$root/target/release/portico}"
sample_secs="${SOAK_SAMPLE_SECS:-30}"
conns="${SOAK_CONNS:-8}"
duration=$((minutes * 60))
warmup="${SOAK_WARMUP_SECS:-$(( duration / 4 < 300 ? duration / 4 : 300 ))}"
for cmd in wrk python3 curl; do
  command -v "$cmd" >/dev/null || { echo "soak: needs $cmd (../shared/bench/setup.sh installs wrk)" >&2; exit 2; }
done
[ -x "$bin" ] || { echo "soak: no gateway binary at $bin (cargo build --release, or set PORTICO_BIN)" >&2; exit 2; }

work="$(mktemp -d /tmp/portico-soak.XXXXXX)"
pids=()
cleanup() {
  trap - EXIT INT TERM
  local p
  for p in "${pids[@]}"; do
    kill -TERM "$p" 2>/dev/null
  done
  sleep 0.5
  for p in "${pids[@]}"; do
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  if [ "${SOAK_KEEP:-0}" = 1 ]; then
    echo "soak: work directory kept: $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'echo "soak: interrupted" >&2; exit 1' INT TERM
# Bound the run whatever happens: the watchdog stops this script (and so, via the trap, all).
( sleep $((duration + 180)); echo "soak: watchdog: over time, stopping" >&2; kill -TERM $$ ) &
pids+=($!)

ports=($(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))'))
listen_port=${ports[0]} admin_port=${ports[1]} origin_port=${ports[2]} ws_port=${ports[3]}
gw="http://127.0.0.1:$listen_port"
admin="http://127.0.0.1:$admin_port"
api_key="soak-key-0123456789abcdef"

# --- upstreams ---
origin_src="$root/../shared/bench/origin/origin.c"
if command -v cc >/dev/null && [ -f "$origin_src" ] && cc -O2 -o "$work/origin" "$origin_src" 2>"$work/origin-build.log"; then
  "$work/origin" "$origin_port" >"$work/origin.log" 2>&1 &
  origin_kind="gwbench C origin"
else
  # No compiler or no shared bench: python's http.server answers 200 to every GET.
  python3 - "$origin_port" >"$work/origin.log" 2>&1 <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b'{"status":"ok"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
  origin_kind="python http.server origin"
fi
pids+=($!)
python3 "$here/soak/ws.py" upstream "$ws_port" >"$work/ws-upstream.log" 2>&1 &
pids+=($!)

# --- gateway ---
write_config() {
  cat >"$work/portico.yaml.tmp" <<YAML
# bench/soak.sh, revision $1
listen: ["127.0.0.1:$listen_port"]
workers: 2
log_level: warn
admin: {enabled: true, listen: "127.0.0.1:$admin_port"}
access_log: {enabled: true, format: json, path: /dev/null}
consumers:
  - {name: soak, api_keys: ["$api_key"]}
services:
  origin: {targets: [{url: "http://127.0.0.1:$origin_port"}]}
  ws: {targets: [{url: "http://127.0.0.1:$ws_port"}]}
routes:
  - name: ok
    service: origin
    match: {path: /ok}
    policies:
      - transform: {response: {headers: {set: {x-soak-revision: "$1"}}}}
  - name: private
    service: origin
    match: {path: /private}
    policies: [{auth: {api_key: true}}]
  - name: limited
    service: origin
    match: {path: /limited}
    policies: [{rate_limit: {limits: [{requests: 50, per: 1s}]}}]
  - name: ws
    service: ws
    match: {path: /ws}
YAML
  mv "$work/portico.yaml.tmp" "$work/portico.yaml"
}
write_config 0
"$bin" run --config "$work/portico.yaml" >"$work/gateway.log" 2>&1 &
gw_pid=$!
pids+=($gw_pid)
for _ in $(seq 100); do
  curl -fs -o /dev/null "$gw/ok" && break
  sleep 0.1
done
if ! curl -fs -o /dev/null "$gw/ok"; then
  echo "soak: the gateway did not come up:" >&2
  tail -20 "$work/gateway.log" >&2
  exit 1
fi

python3 "$here/soak/ws.py" client 127.0.0.1 "$listen_port" /ws "$work/ws.status" >"$work/ws-client.log" 2>&1 &
ws_pid=$!
pids+=($ws_pid)
for _ in $(seq 50); do
  [ -s "$work/ws.status" ] && break
  sleep 0.1
done
if ! grep -q '^open' "$work/ws.status" 2>/dev/null; then
  echo "soak: the WebSocket connection did not open: $(cat "$work/ws.status" 2>/dev/null)" >&2
  exit 1
fi

# --- reloads every 200 ms, each with a new revision so the plan really changes ---
(
  rev=0 applied=0 failed=0
  while :; do
    rev=$((rev + 1))
    write_config "$rev"
    answer=$(curl -s -m 5 -X POST "$admin/reload" -w ' %{http_code}')
    case "$answer" in
      *'"applied"'*' 200') applied=$((applied + 1)) ;;
      *) failed=$((failed + 1)); echo "rev $rev: $answer" >>"$work/reload-failures.log" ;;
    esac
    # Replaced, not rewritten in place: the sampler must never read a half-written count.
    echo "$applied $failed" >"$work/reloads.tmp" && mv "$work/reloads.tmp" "$work/reloads"
    sleep 0.2
  done
) &
pids+=($!)

# --- load ---
wrk -t "$conns" -c "$conns" -d "${duration}s" --timeout 10s -s "$here/soak/check.lua" "$gw" -- \
  "/ok 200" "/nothing 404" "/private 401" "/private 200 x-api-key: $api_key" "/limited 200,429" \
  >"$work/wrk.out" 2>&1 &
wrk_pid=$!
pids+=($wrk_pid)

# --- samples ---
tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$gw_pid/stat" 2>/dev/null; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$gw_pid/status" 2>/dev/null; }
requests() {
  curl -s -m 5 "$admin/metrics" | awk '/^portico_requests_total/ {n += $NF} END {printf "%d", n}'
}
failures=()
started=$(date +%s)
last_ticks=$(cpu_ticks) last_time=$(date +%s.%N)
baseline_rss="" final_rss=""
echo "soak: ${minutes} min, gateway pid $gw_pid ($bin), $origin_kind, wrk $conns connections, work dir $work" >&2
printf '| t (s) | RSS MiB | fds | threads | CPU %% | requests | reloads applied | WebSocket |\n'
printf '|---:|---:|---:|---:|---:|---:|---:|---|\n'
sample() {
  local now ticks rss fds threads cpu reqs reloads ws t
  now=$(date +%s.%N)
  ticks=$(cpu_ticks)
  if [ -z "$ticks" ]; then
    failures+=("the gateway exited: $(tail -3 "$work/gateway.log" | tr '\n' ' ')")
    return 1
  fi
  rss=$(rss_kb)
  fds=$(ls "/proc/$gw_pid/fd" 2>/dev/null | wc -l)
  threads=$(awk '/^Threads/ {print $2}' "/proc/$gw_pid/status")
  cpu=$(awk -v a="$last_ticks" -v b="$ticks" -v t0="$last_time" -v t1="$now" -v hz="$tck" \
    'BEGIN {printf "%.1f", (b - a) / hz / (t1 - t0) * 100}')
  last_ticks=$ticks last_time=$now
  reqs=$(requests)
  reloads=$(cut -d' ' -f1 "$work/reloads" 2>/dev/null)
  ws=$(cat "$work/ws.status" 2>/dev/null)
  t=$(( $(date +%s) - started ))
  printf '| %d | %.1f | %d | %d | %s | %s | %s | %s |\n' "$t" "$(echo "$rss / 1024" | bc -l)" \
    "$fds" "$threads" "$cpu" "${reqs:-?}" "${reloads:-0}" "${ws:-none}"
  if [ -z "$baseline_rss" ] && [ "$t" -ge "$warmup" ]; then
    baseline_rss=$rss
  fi
  final_rss=$rss
}
while kill -0 "$wrk_pid" 2>/dev/null; do
  # Sleep in short steps so the end of the load is noticed within a second.
  for _ in $(seq "$sample_secs"); do
    kill -0 "$wrk_pid" 2>/dev/null || break
    sleep 1
  done
  sample || break
  if ! kill -0 "$ws_pid" 2>/dev/null || ! grep -q '^open' "$work/ws.status"; then
    failures+=("the WebSocket connection ended: $(cat "$work/ws.status" 2>/dev/null)")
    break
  fi
done
wait "$wrk_pid" 2>/dev/null

# --- verdict ---
ws_state=$(cat "$work/ws.status" 2>/dev/null)
if kill -0 "$ws_pid" 2>/dev/null && [[ "$ws_state" == open* ]]; then
  kill -TERM "$ws_pid"
  wait "$ws_pid" 2>/dev/null
  ws_state=$(cat "$work/ws.status" 2>/dev/null)
  [[ "$ws_state" == closed-by-client* ]] || failures+=("the WebSocket connection failed at the end: $ws_state")
else
  failures+=("the WebSocket connection did not last the run: $ws_state")
fi
read -r applied reload_failed <"$work/reloads" || { applied=0; reload_failed=0; }
[ "${reload_failed:-0}" -eq 0 ] || failures+=("$reload_failed reload(s) not applied: $(head -2 "$work/reload-failures.log" | tr '\n' ' ')")
[ "${applied:-0}" -gt 0 ] || failures+=("no reload was applied")

grep -q '^soak-requests' "$work/wrk.out" || failures+=("wrk did not finish: $(tail -3 "$work/wrk.out" | tr '\n' ' ')")
total=$(awk '/^soak-requests/ {print $2}' "$work/wrk.out")
socket=$(awk '/^soak-socket-errors/ {print $2, $3, $4, $5}' "$work/wrk.out")
bad=$(awk '/^soak-unexpected/ {print $2}' "$work/wrk.out")
[ "${bad:-1}" = 0 ] || failures+=("unexpected statuses: $(grep '^soak-unexpected' "$work/wrk.out" | cut -d' ' -f2-)")
[ "$socket" = "connect=0 read=0 write=0 timeout=0" ] || failures+=("socket errors: $socket")
spec_names=("/ok" "/nothing" "/private (no key)" "/private (key)" "/limited")
echo
echo "requests by path and status (wrk, ${conns} connections): ${total:-?} in total"
awk '/^soak-status/ {print $2, $3, $4}' "$work/wrk.out" | sort -n | while read -r i status n; do
  printf '  %-18s %s  %s\n' "${spec_names[$((i - 1))]}" "$status" "$n"
done
grep -q '^soak-status 5 429 ' "$work/wrk.out" || failures+=("the rate-limited route never answered 429")
grep '^soak-latency' "$work/wrk.out" | sed 's/^soak-latency-ms /latency (ms): /'
echo "reloads: ${applied:-0} applied, ${reload_failed:-0} failed; WebSocket: $ws_state"

if [ -n "$baseline_rss" ] && [ -n "$final_rss" ]; then
  growth=$(awk -v a="$baseline_rss" -v b="$final_rss" 'BEGIN {printf "%.1f", (b - a) * 100 / a}')
  echo "RSS after warm-up (${warmup} s): $((baseline_rss / 1024)) MiB -> $((final_rss / 1024)) MiB at the end (${growth} %)"
  awk -v g="$growth" 'BEGIN {exit !(g > 10)}' && failures+=("RSS grew ${growth} % after the warm-up")
else
  echo "RSS: no sample after the warm-up (${warmup} s); growth not checked"
fi
if grep -qiE 'panicked|ERROR' "$work/gateway.log"; then
  failures+=("the gateway logged errors: $(grep -iE -m2 'panicked|ERROR' "$work/gateway.log" | tr '\n' ' ')")
fi

if [ "${#failures[@]}" -gt 0 ]; then
  echo "soak: FAILED" >&2
  printf '  - %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "soak: passed"
