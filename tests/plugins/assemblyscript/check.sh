#!/usr/bin/env bash
# Rebuilds the tenant-gate filter into a temporary file and fails when it differs, byte for byte,
# from the committed tenant-gate.wasm (the source, the lock file or the build changed without
# the module being rebuilt, or the build stopped being deterministic).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmpdir="$(mktemp -d)"
trap 'rm -rf "$tmpdir"' EXIT

"$here/build.sh" "$tmpdir/tenant-gate.wasm" >/dev/null

if cmp -s "$tmpdir/tenant-gate.wasm" "$here/tenant-gate.wasm"; then
    echo "tenant-gate.wasm is up to date ($(stat -c %s "$here/tenant-gate.wasm") bytes)"
else
    echo "tests/plugins/assemblyscript/tenant-gate.wasm differs from a fresh build of assembly/index.ts" >&2
    echo "  committed: $(sha256sum < "$here/tenant-gate.wasm" | cut -d' ' -f1)  $(stat -c %s "$here/tenant-gate.wasm") bytes" >&2
    echo "  rebuilt:   $(sha256sum < "$tmpdir/tenant-gate.wasm" | cut -d' ' -f1)  $(stat -c %s "$tmpdir/tenant-gate.wasm") bytes" >&2
    echo "  run tests/plugins/assemblyscript/build.sh and commit tenant-gate.wasm" >&2
    exit 1
fi
