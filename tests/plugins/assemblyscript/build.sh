#!/usr/bin/env bash
# Builds the tenant-gate proxy-wasm filter (assembly/index.ts) into tenant-gate.wasm, or into the
# file given as the first argument, with the toolchain pinned in package-lock.json.
#
# Dependencies are installed with `npm ci` (prefer the npm cache, so a warm cache builds offline)
# and only when node_modules does not already match package-lock.json. The build is
# deterministic: the same sources and lock file give the same bytes (check.sh checks this).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/tenant-gate.wasm}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
cd "$here"

stamp=node_modules/.portico-lock.sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    npm ci --prefer-offline --no-audit --no-fund --loglevel=error
    echo "$want" > "$stamp"
fi

start=$(date +%s%3N)
tmp="$(mktemp "${out}.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
# The entry path stays relative: file names the compiler embeds (in abort messages) carry no
# machine-specific directory. Options are in asconfig.json (target `release`).
node node_modules/assemblyscript/bin/asc assembly/index.ts \
    --config asconfig.json --target release --binaryFile "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
ms=$(( $(date +%s%3N) - start ))
echo "built $out: $(stat -c %s "$out") bytes in $((ms / 1000)).$(printf %03d $((ms % 1000)))s"
