#!/usr/bin/env bash
# bench/callgrind.sh's stand-in for the binary: the release build under callgrind.
exec valgrind --tool=callgrind --callgrind-out-file="${CALLGRIND_OUT:-/dev/null}" \
  "${PORTICO_VALGRIND_BIN:-$(dirname "${BASH_SOURCE[0]}")/../target/release/portico}" "$@"
