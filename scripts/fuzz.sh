#!/usr/bin/env bash
# Fuzzes every parser of outside input with cargo-fuzz (libFuzzer + AddressSanitizer), SECONDS
# each (default 60), one after the other; prints each target's executions. Exits non-zero on the
# first crash (the input is kept under fuzz/artifacts/<target>/; replay it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`).
#
#   scripts/fuzz.sh [SECONDS] [TARGET ...]     targets: `cargo fuzz list` (default: all)
#   FUZZ_SEED=1 scripts/fuzz.sh 20              a fixed seed: the same inputs on every run (CI)
#   FUZZ_RUNS=10000000 FUZZ_SANITIZER=none scripts/fuzz.sh 86400
#                                               a long run: each target stops after 10 million
#                                               executions (SECONDS is then only an upper bound),
#                                               built without AddressSanitizer (2-3x the executions
#                                               a second; safe Rust needs it little) in its own
#                                               target directory, target/fuzz-none
#
# cargo-fuzz is installed when missing (`cargo install cargo-fuzz --locked`). It passes
# nightly-only `-Z` flags (the sanitizer, coverage counters) to rustc: RUSTC_BOOTSTRAP=1 lets the
# stable toolchain take them, so no nightly is needed. The committed seeds (fuzz/corpus/<target>/)
# are only read; what a run finds goes to target/fuzz-corpus/<target>/ (kept between runs).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS] [TARGET ...]" >&2
  exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

sanitizer=${FUZZ_SANITIZER:-address}
build_args=(-O --debug-assertions -s "$sanitizer")
if [ "$sanitizer" != address ]; then
  build_args+=(--target-dir "target/fuzz-$sanitizer")
fi
# One build for every target (release, with debug assertions and, by default, ASan).
cargo fuzz build "${build_args[@]}"

total=0
for target in "${targets[@]}"; do
  work="target/fuzz-corpus/$target"
  mkdir -p "$work" "fuzz/corpus/$target"
  log=$(mktemp)
  status=0
  started=$SECONDS
  cargo fuzz run "${build_args[@]}" "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    ${FUZZ_SEED:+-seed="$FUZZ_SEED"} ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"} \
    >"$log" 2>&1 || status=$?
  runs=$(awk '/stat::number_of_executed_units/ { print $NF }' "$log" | tail -n 1)
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    rm -f "$log"
    echo "fuzz: $target FAILED after ${runs:-?} executions (see fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  rm -f "$log"
  echo "fuzz: $target: ${runs:-0} executions in $((SECONDS - started)) s, no crash"
  total=$((total + ${runs:-0}))
done
echo "fuzz: ${#targets[@]} targets, $total executions, no crash"
