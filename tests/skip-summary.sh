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
if [ -n "$retries" ] && [ -s "$retries" ]; then
  n=$(wc -l < "$retries")
  echo "test summary: $n attempt(s) RETRIED:"
  sed 's/^/  /' "$retries"
else
  echo "test summary: no attempt retried"
fi
