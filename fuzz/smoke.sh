#!/usr/bin/env bash
# Build every fuzz target and run each for a short while (default 10 s; FUZZ_SECONDS to
# change). A crash, panic or leak fails the run and leaves the input in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-10}
# No sanitizer: it would need a nightly toolchain; coverage guidance works without it.
cargo fuzz build -s none -O
for target in $(cargo fuzz list); do
  echo "fuzz: $target for ${secs}s"
  out=$(cargo fuzz run "$target" -s none -O -- -max_total_time="$secs" 2>&1) || {
    printf '%s\n' "$out" | tail -40
    echo "fuzz: $target FAILED" >&2
    exit 1
  }
  printf '%s\n' "$out" | grep -E '^Done' || true
done
