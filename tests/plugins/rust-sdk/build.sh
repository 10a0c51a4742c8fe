#!/usr/bin/env bash
# Builds the Rust SDK filter (src/lib.rs) into rust-gate.wasm, or into the file given as the
# first argument: the `wasm32-unknown-unknown` target is added to the toolchain when missing,
# dependencies come from the committed Cargo.lock. The build is deterministic (the same
# sources, lock file and toolchain give the same bytes; check.sh checks this): paths are
# remapped so no machine-specific directory is embedded.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/rust-gate.wasm}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
cd "$here"

# Exit status 3: the target is missing and cannot be added here (no rustup, or no access to
# its distribution server); check.sh reports that as a skipped check, not a difference.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || {
        echo "build.sh: the wasm32-unknown-unknown target is missing and could not be added" >&2
        exit 3
    }
fi
target="${CARGO_TARGET_DIR:-$here/target}"
RUSTFLAGS="--remap-path-prefix=$here=rust-gate --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=cargo" \
    CARGO_TARGET_DIR="$target" \
    cargo build --quiet --release --locked --target wasm32-unknown-unknown
cp "$target/wasm32-unknown-unknown/release/rust_gate.wasm" "$out.tmp"
mv -f "$out.tmp" "$out"
