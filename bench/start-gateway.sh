#!/usr/bin/env bash
# The ../shared/bench contract: start the gateway in the foreground on 127.0.0.1:$1, proxying every
# path to 127.0.0.1:$2, with GWBENCH_WORKERS workers (default 1). Builds nothing: runs the `dist`
# build (`cargo build --profile dist`, fat LTO) when there is one, else the `release` build.
#   PORTICO_BENCH_PROFILE=NAME   use bench/NAME.yaml (default: plain): plain, jwt, ratelimit,
#                                ratelimit-redis, cache, resilience, transform, aggregate, openapi,
#                                apikey, consumers-redis
#   PORTICO_BENCH_ACCESS_LOG=1   turn the access log on (to /tmp/portico-bench-access.log)
#   PORTICO_BENCH_BIN=PATH       run another build (A/B comparisons)
#   PORTICO_BENCH_REDIS_PORT=N   the redis-server of the ratelimit-redis and consumers-redis
#                                profiles (default 6379)
#   PORTICO_BENCH_OTLP_PORT=N    the OTLP/HTTP collector of the tracing profile (default 4318)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
profile="${PORTICO_BENCH_PROFILE:-plain}"
access_log=false
[ "${PORTICO_BENCH_ACCESS_LOG:-0}" = "1" ] && access_log=true
config="$(mktemp /tmp/portico-bench-XXXXXX.yaml)"
sed -e "s/@LISTEN_PORT@/$1/g" -e "s/@UPSTREAM_PORT@/$2/g" \
    -e "s/@WORKERS@/${GWBENCH_WORKERS:-1}/g" -e "s/@ACCESS_LOG@/$access_log/g" \
    -e "s/@REDIS_PORT@/${PORTICO_BENCH_REDIS_PORT:-6379}/g" \
    -e "s/@OTLP_PORT@/${PORTICO_BENCH_OTLP_PORT:-4318}/g" \
    -e "s|@BENCH_DIR@|$here|g" \
    "$here/$profile.yaml" > "$config"
bin="$here/../target/dist/portico"
[ -x "$bin" ] || bin="$here/../target/release/portico"
exec "${PORTICO_BENCH_BIN:-$bin}" run --config "$config"
