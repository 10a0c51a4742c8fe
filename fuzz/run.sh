#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS; fails on any crash, panic, timeout or OOM.
#
#   fuzz/run.sh SECONDS [TARGET...]     # default: every target in fuzz/Cargo.toml
#
# Prints one line per target with the executions libFuzzer counted. Each run starts from the
# committed seeds (fuzz/corpus/TARGET, read only) plus what earlier runs found (kept in
# fuzz/target/corpus/TARGET, not committed). A crashing input is saved under
# fuzz/artifacts/TARGET/; reproduce it with
#   cargo +nightly fuzz run -s none -a TARGET fuzz/artifacts/TARGET/crash-...
# Environment: FUZZ_SANITIZER (default none: the crate forbids unsafe code, and without ASan
# the runs get about twice the executions; `address` checks the dependencies' unsafe code too),
# FUZZ_JOBS (default 1 process per target).
set -uo pipefail

seconds="${1:-}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "usage: fuzz/run.sh SECONDS [TARGET...]" >&2
  exit 2
fi
shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here" || exit 2
sanitizer="${FUZZ_SANITIZER:-none}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "run.sh: needs the nightly toolchain and cargo-fuzz:" >&2
  echo "  rustup toolchain install nightly && cargo install cargo-fuzz" >&2
  exit 2
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# -a: debug assertions (integer overflow is a crash here, where release builds would wrap).
flags=(-s "$sanitizer" -a --release)
echo "building ${#targets[@]} targets (sanitizer: $sanitizer)..." >&2
if ! cargo +nightly fuzz build "${flags[@]}" >target-build.log 2>&1; then
  tail -30 target-build.log >&2
  echo "run.sh: the build failed (full log: fuzz/target-build.log)" >&2
  exit 1
fi
rm -f target-build.log

mkdir -p target/logs
failed=0
printf '%-16s %8s %14s %10s %8s  %s\n' target seconds executions "exec/s" corpus result
for t in "${targets[@]}"; do
  work="target/corpus/$t"
  mkdir -p "$work" "artifacts/$t"
  log="target/logs/$t.log"
  args=(
    -max_total_time="$seconds"
    # Any single input over 10 s is a hang; the config target checks its own 1 s budget.
    -timeout=10
    -rss_limit_mb=2048
    -max_len=65536
    -print_final_stats=1
  )
  [ -f "dict/$t.dict" ] && args+=(-dict="dict/$t.dict")
  if [ -n "${FUZZ_JOBS:-}" ]; then
    args+=(-fork="$FUZZ_JOBS")
  fi
  before=$(find "artifacts/$t" -type f | wc -l)
  # The writable corpus first: libFuzzer adds what it finds to the first directory only.
  cargo +nightly fuzz run "${flags[@]}" "$t" "$work" "corpus/$t" -- "${args[@]}" >"$log" 2>&1
  status=$?
  after=$(find "artifacts/$t" -type f | wc -l)
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  corpus=$(find "$work" -type f | wc -l)
  if [ "$status" -eq 0 ] && [ "$after" -eq "$before" ]; then
    result=ok
  else
    result="FAILED (exit $status; $((after - before)) new artifact(s); log fuzz/$log)"
    failed=1
  fi
  printf '%-16s %8s %14s %10s %8s  %s\n' "$t" "$seconds" "${execs:-?}" "${rate:-?}" "$corpus" "$result"
  if [ "$result" != ok ]; then
    grep -E -m5 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | sed 's/^/    /'
  fi
done
exit "$failed"
