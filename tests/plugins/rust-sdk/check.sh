#!/usr/bin/env bash
# Rebuilds the Rust SDK filter in a temporary target directory and fails when it differs, byte
# for byte, from the committed rust-gate.wasm.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmpdir="$(mktemp -d)"
trap 'rm -rf "$tmpdir"' EXIT

CARGO_TARGET_DIR="$tmpdir/target" "$here/build.sh" "$tmpdir/rust-gate.wasm"

"$here/../same-module.sh" "$here/rust-gate.wasm" "$tmpdir/rust-gate.wasm" "tests/plugins/rust-sdk/src/lib.rs" \
    tests/plugins/rust-sdk/build.sh
