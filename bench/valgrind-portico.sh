#!/usr/bin/env bash
# bench/callgrind.sh's stand-in for the binary: the dist build (else the release build) under
# callgrind.
here="$(dirname "${BASH_SOURCE[0]}")"
bin="$here/../target/dist/portico"
[ -x "$bin" ] || bin="$here/../target/release/portico"
exec valgrind --tool=callgrind --callgrind-out-file="${CALLGRIND_OUT:-/dev/null}" \
  "${PORTICO_VALGRIND_BIN:-$bin}" "$@"
