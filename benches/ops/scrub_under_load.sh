#!/usr/bin/env bash
# Client throughput while `remap serve` scrubs in the background.
#
# One file of random data on tmpfs (/dev/shm) is served by the release `remap serve` with a
# control socket. The same client work runs with no scrub, with a background scrub at
# SCRUB_RATE MiB/s (`remap scrub --control PATH --rate N`), and with an unthrottled one
# (rate 100000 MiB/s: the scrub reads as fast as it can, in its 128 KiB chunks):
#   - sequential read of the whole device with nbdcopy (to null:), MiB/s;
#   - 4 KiB random reads with fio's nbd engine at queue depth 16, IOPS.
# Each cell is the median of REPS runs. During each run a watcher restarts the scrub
# whenever it finishes a pass, so a scrub runs for the whole measurement; the scrub's own
# measured rate is printed. Client errors are the server's failed_ios (must stay 0).
#
# Usage: benches/ops/scrub_under_load.sh        (about 2 minutes)
# Environment: REPS (3), RUNTIME seconds per fio run (4), SIZE_MIB (1024), SCRUB_RATE (64).
set -euo pipefail
cd "$(dirname "$0")/../.."

REPS=${REPS:-3}
RUNTIME=${RUNTIME:-4}
SIZE_MIB=${SIZE_MIB:-1024}
SCRUB_RATE=${SCRUB_RATE:-64}
WORK=$(mktemp -d /dev/shm/remap-ops-bench.XXXXXX)
MAIN=$WORK/main.img
SPARE=$WORK/spare.img
SOCK=$WORK/nbd.sock
CTL=$WORK/ctl
URI="nbd+unix:///?socket=$SOCK"
SERVER_PID=

for tool in nbdcopy fio jq bc; do
  command -v "$tool" >/dev/null || { echo "scrub_under_load.sh: $tool is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
done

cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "building the release remap..." >&2
cargo build -q --release -p remap-cli
REMAP=${CARGO_TARGET_DIR:-target}/release/remap

echo "writing ${SIZE_MIB} MiB of random data to $WORK..." >&2
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$MAIN"
truncate -s 64M "$SPARE"
"$REMAP" create "$MAIN" "$SPARE" >/dev/null

RUST_LOG=warn "$REMAP" serve "$MAIN" "$SPARE" --socket "$SOCK" --control "$CTL" >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do [ -S "$CTL" ] && [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$CTL" ] || { echo "remap serve did not start:" >&2; cat "$WORK/serve.log" >&2; exit 1; }

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Keep a background scrub at RATE MiB/s running (restarted after each pass) until killed.
keep_scrubbing() {
  while true; do
    state=$("$REMAP" scrub --control "$CTL" --status --json | jq -r .state)
    if [ "$state" != running ]; then "$REMAP" scrub --control "$CTL" --rate "$1" >/dev/null; fi
    sleep 0.2
  done
}

# Run "$@" with a background scrub at RATE (none: without); print its output.
with_scrub() {
  local rate=$1 watcher=
  shift
  if [ "$rate" != none ]; then
    keep_scrubbing "$rate" &
    watcher=$!
    sleep 0.3
  fi
  "$@"
  if [ -n "$watcher" ]; then
    kill "$watcher"; wait "$watcher" 2>/dev/null || true
    "$REMAP" scrub --control "$CTL" --stop --json | jq '.bytes_per_s / 1048576' >"$WORK/scrub_rate"
  fi
}

seq_read() {
  local t0 t1
  t0=$(date +%s.%N)
  nbdcopy "$URI" null:
  t1=$(date +%s.%N)
  echo "$SIZE_MIB / ($t1 - $t0)" | bc -l
}

rand_read() {
  fio --name=r --ioengine=nbd --uri="$URI" --rw=randread --bs=4k --iodepth=16 \
    --time_based --runtime="$RUNTIME" --output-format=json --output="$WORK/fio.json" >/dev/null 2>&1
  jq '.jobs[0].read.iops' "$WORK/fio.json"
}

declare -A SEQ RAND SCRUBBED
for mode in none "$SCRUB_RATE" 100000; do
  seqs=() rands=() rates=()
  for _ in $(seq "$REPS"); do
    seqs+=("$(with_scrub "$mode" seq_read)")
    [ "$mode" = none ] || rates+=("$(cat "$WORK/scrub_rate")")
    rands+=("$(with_scrub "$mode" rand_read)")
  done
  SEQ[$mode]=$(printf '%s\n' "${seqs[@]}" | median)
  RAND[$mode]=$(printf '%s\n' "${rands[@]}" | median)
  if [ "$mode" = none ]; then SCRUBBED[$mode]=-; else SCRUBBED[$mode]=$(printf '%s\n' "${rates[@]}" | median); fi
done
FAILED=$("$REMAP" status --control "$CTL" --json | jq '.stats.failed_ios')

printf '\nremap serve, %s MiB tmpfs file, medians of %s runs (release build, %s cores)\n' "$SIZE_MIB" "$REPS" "$(nproc)"
printf '%-28s %14s %14s %16s\n' "background scrub" "seq read MiB/s" "4k rand IOPS" "scrub MiB/s"
for mode in none "$SCRUB_RATE" 100000; do
  case $mode in none) label="none";; 100000) label="unthrottled";; *) label="--rate $mode";; esac
  printf '%-28s %14.1f %14.0f %16s\n' "$label" "${SEQ[$mode]}" "${RAND[$mode]}" \
    "$( [ "${SCRUBBED[$mode]}" = - ] && echo - || printf '%.1f' "${SCRUBBED[$mode]}")"
done
for mode in "$SCRUB_RATE" 100000; do
  printf 'ratio to no scrub (%s): seq %.2f, rand %.2f\n' "$mode" \
    "$(echo "${SEQ[$mode]} / ${SEQ[none]}" | bc -l)" "$(echo "${RAND[$mode]} / ${RAND[none]}" | bc -l)"
done
echo "client requests that failed: $FAILED"
[ "$FAILED" = 0 ]
