#!/bin/sh
# The end of `make test`: how many tests were skipped (a developer machine without /dev/kvm,
# root or the rig; under CI=true those tests fail instead), and which; and which attempts were
# run again (a rig L1 host that hung), so a pass that needed a retry is seen.
skips=$1
retries=${2:-}
if [ -s "$skips" ]; then
  n=$(wc -l < "$skips")
  echo "test summary: $n test(s) SKIPPED (they would fail under CI=true):"
  sed 's/^/  /' "$skips"
else
  echo "test summary: no test skipped"
fi
if [ -n "$retries" ] && grep -q '^RETRIED' "$retries" 2>/dev/null; then
  n=$(grep -c '^RETRIED' "$retries")
  echo "test summary: $n attempt(s) RETRIED:"
  grep '^RETRIED' "$retries" | sed 's/^/  /'
else
  echo "test summary: no attempt retried"
fi
# A silent rig L1 that spoke again after the harness's QMP nudge (tests/src/rig.rs).
if [ -n "$retries" ] && grep -q '^NUDGED' "$retries" 2>/dev/null; then
  echo "test summary: $(grep -c '^NUDGED' "$retries") silent L1 host(s) NUDGED:"
  grep '^NUDGED' "$retries" | sed 's/^/  /'
fi
