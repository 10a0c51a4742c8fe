#!/usr/bin/env bash
# Instructions per request of a bench profile, counted by callgrind: repeatable whatever else the
# machine is doing (unlike CPU time). Runs the release build under valgrind twice, with N1 and N2
# keep-alive `GET /small` requests against the shared bench's C origin, and prints
# (instructions(N2) - instructions(N1)) / (N2 - N1), so start-up and shutdown cancel out.
#   bench/callgrind.sh [profile...]      (default: plain)
# Waits up to CALLGRIND_WAIT_TENTHS (default 1200: 2 min, for a loaded machine) tenths of a
# second for the gateway under valgrind to answer.
# CALLGRIND_NEWCONN=1 sends each request on a new connection (`Connection: close`).
# CALLGRIND_KEEP=DIR keeps both profiles as DIR/PROFILE-N.out, for bench/callgrind-diff.py (which
# functions the extra requests cost).
# Needs: valgrind, python3, ../shared/bench/setup.sh done once (the origin binary), and
# `cargo build --release`. Profiles that need Redis need it running (see bench/README.md). The
# `tracing` profile starts examples/otlp_sink (release or debug build: `cargo build --example
# otlp_sink`) as its collector; the gateway's instructions are counted (its export threads
# included), not the collector's, whose span count is printed at the end.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
n1=${N1:-1000}
n2=${N2:-4000}
origin_bin="$(ls /tmp/gwbench/bin/gwbench-origin-* 2>/dev/null | head -1)"
[ -x "$origin_bin" ] || { echo "run ../shared/bench/setup.sh and ../shared/bench/peers.sh once first (it builds the origin)" >&2; exit 1; }
oport=18181; gport=18180; tport=18182
"$origin_bin" "$oport" >/dev/null 2>&1 & origin=$!
sink=""
trap 'kill $origin $sink 2>/dev/null' EXIT
if [[ " ${*:-plain} " == *" tracing "* ]]; then
  sink_bin="$here/../target/release/examples/otlp_sink"
  [ -x "$sink_bin" ] || sink_bin="$here/../target/debug/examples/otlp_sink"
  [ -x "$sink_bin" ] || { echo "build the collector first: cargo build --example otlp_sink" >&2; exit 1; }
  "$sink_bin" "127.0.0.1:$tport" 2>/tmp/portico-callgrind-sink.log & sink=$!
fi

requests() { # N [AUTH]: N keep-alive requests over one connection (each on a new connection with
  # CALLGRIND_NEWCONN=1), with an Authorization header
  python3 - "$gport" "$1" "${2:-}" "${CALLGRIND_NEWCONN:-0}" <<'PY'
import http.client, sys
port, n, auth, newconn = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
headers = {"Authorization": auth} if auth else {}
if newconn:
    headers["Connection"] = "close"
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    if newconn:
        c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/small", headers=headers); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
    if newconn:
        c.close()
PY
}

count() { # PROFILE N: total instructions of a gateway run serving N requests
  local out; out="$(mktemp /tmp/portico-callgrind-XXXXXX)"
  PORTICO_BENCH_PROFILE="$1" GWBENCH_WORKERS=1 PORTICO_BENCH_BIN="$here/valgrind-portico.sh" \
    PORTICO_BENCH_OTLP_PORT="$tport" \
    CALLGRIND_OUT="$out" "$here/start-gateway.sh" "$gport" "$oport" 2>"$out.log" &
  local gw=$!
  local auth=""
  # Profiles with JWT authentication get the committed long-lived bench token.
  case "$1" in jwt|full) auth="Bearer $(cat "$here/jwt-token.txt")" ;; esac
  for _ in $(seq 1 "${CALLGRIND_WAIT_TENTHS:-1200}"); do
    curl -s -o /dev/null -H "Authorization: $auth" "http://127.0.0.1:$gport/small" 2>/dev/null && break; sleep 0.1
  done
  requests "$2" "$auth"
  # start-gateway.sh and valgrind-portico.sh exec: $gw is the process under valgrind.
  kill -TERM "$gw" 2>/dev/null || true
  wait "$gw" || true
  grep -o "Collected : [0-9]*" "$out.log" | awk '{print $3}'
  if [ -n "${CALLGRIND_KEEP:-}" ]; then mkdir -p "$CALLGRIND_KEEP"; cp "$out" "$CALLGRIND_KEEP/$1-$2.out"; fi
  rm -f "$out" "$out.log"
}

for profile in "${@:-plain}"; do
  a=$(count "$profile" "$n1"); b=$(count "$profile" "$n2")
  echo "$profile: $(( (b - a) / (n2 - n1) )) instructions per request"
done
if [ -n "$sink" ]; then
  kill -TERM "$sink" 2>/dev/null; wait "$sink" 2>/dev/null || true; sink=""
  tail -1 /tmp/portico-callgrind-sink.log
fi
