#!/usr/bin/env bash
# Rebuilds the tenant-gate filter into a temporary file and fails when it differs, byte for byte,
# from the committed tenant-gate.wasm (the source, the lock file or the build changed without
# the module being rebuilt, or the build stopped being deterministic).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmpdir="$(mktemp -d)"
trap 'rm -rf "$tmpdir"' EXIT

"$here/build.sh" "$tmpdir/tenant-gate.wasm" >/dev/null

"$here/../same-module.sh" "$here/tenant-gate.wasm" "$tmpdir/tenant-gate.wasm" "tests/plugins/assemblyscript/assembly/index.ts" \
    tests/plugins/assemblyscript/build.sh
