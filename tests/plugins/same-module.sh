#!/usr/bin/env bash
# same-module.sh COMMITTED REBUILT SOURCE BUILD: exits 0 (saying so) when the freshly built
# module REBUILT is byte for byte the committed COMMITTED, else names both hashes and how to
# rebuild (BUILD) from SOURCE, and exits 1. Used by the SDK filters' check.sh.
set -euo pipefail
committed="$1" rebuilt="$2" source="$3" build="$4"
if cmp -s "$rebuilt" "$committed"; then
    echo "$(basename "$committed") is up to date ($(stat -c %s "$committed") bytes)"
    exit 0
fi
echo "$committed differs from a fresh build of $source" >&2
echo "  committed: $(sha256sum < "$committed" | cut -d' ' -f1)  $(stat -c %s "$committed") bytes" >&2
echo "  rebuilt:   $(sha256sum < "$rebuilt" | cut -d' ' -f1)  $(stat -c %s "$rebuilt") bytes" >&2
echo "  run $build and commit $(basename "$committed")" >&2
exit 1
