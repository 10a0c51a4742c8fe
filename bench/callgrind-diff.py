#!/usr/bin/env python3
"""Instructions per request by function: the difference of two callgrind profiles that served
N1 and N2 requests (bench/callgrind.sh with CALLGRIND_KEEP=DIR), divided by N2 - N1, so that
start-up and shutdown cancel out. Self cost (exclusive) per function, largest first, with the
share of the total.

    bench/callgrind-diff.py DIR/plain-1000.out DIR/plain-4000.out 3000 [TOP]
"""
import re
import subprocess
import sys


def self_costs(path):
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--auto=no", "--tree=none", "--threshold=100", path],
        capture_output=True, text=True, check=True,
    ).stdout
    costs = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)$", line)
        if m and ":" in m.group(2):
            name = m.group(2).split(":", 1)[1].strip()
            name = re.sub(r"\s+\[[^\]]*\]$", "", name)
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def main():
    a, b, n = self_costs(sys.argv[1]), self_costs(sys.argv[2]), int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    diff = {k: (b.get(k, 0) - a.get(k, 0)) / n for k in set(a) | set(b)}
    total = sum(diff.values())
    print(f"{total:10.0f}  instructions per request (sum of self costs)")
    for name, cost in sorted(diff.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{cost:10.0f}  {100 * cost / total:5.1f} %  {name[:150]}")


if __name__ == "__main__":
    main()
