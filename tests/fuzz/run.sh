#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (libFuzzer through cargo-fuzz), starting from the
# checked-in corpus (tests/fuzz/corpus/TARGET) plus what earlier runs found (build/fuzz/corpus,
# where new inputs go, so the checked-in corpus stays as it is). Prints runs and crashes per
# target; exits non-zero if any target crashed (its input is kept under build/fuzz/artifacts)
# or could not run ("error": see build/fuzz/TARGET.log).
#   run.sh SECONDS
set -euo pipefail
seconds=${1:?usage: run.sh SECONDS}
here=$(cd "$(dirname "$0")" && pwd)
out=$(cd "$here/../.." && pwd)/build/fuzz
cd "$here"
# cargo-fuzz needs the instrumentation flags of a nightly rustc; the one toolchain here is
# stable, and RUSTC_BOOTSTRAP lets it take them.
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v -e '^vmm-fuzz$' -e '^make_corpus$')
cargo fuzz build --fuzz-dir . >&2
failed=0
total=0
printf '%-22s %12s %8s\n' target runs crashes
for t in $targets; do
  mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
  log="$out/$t.log"
  if cargo fuzz run --fuzz-dir . "$t" "$out/corpus/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -artifact_prefix="$out/artifacts/$t/" -print_final_stats=1 \
      > "$log" 2>&1; then
    crashes=0
  elif grep -q "Test unit written" "$log"; then
    crashes=1
    failed=1
  else
    crashes=error
    failed=1
  fi
  runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n1)
  runs=${runs:-0}
  total=$((total + runs))
  printf '%-22s %12s %8s\n' "$t" "$runs" "$crashes"
  if [ "$crashes" != 0 ]; then
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -n 20 >&2 || true
  fi
done
printf '%-22s %12s\n' total "$total"
exit $failed
