#!/usr/bin/env bash
# Server CPU per GiB moved, ours against nbdkit's file plugin: steadier than MiB/s on a
# shared machine, since it does not count time spent waiting for a CPU.
#
# Serves one tmpfs file (SIZE_MIB, default 512) with each server in turn, runs nbdcopy
# REPS times each way, and prints the server's CPU seconds (user + system, from
# /proc/PID/stat) per GiB written and read, and the MiB/s (noisy on a shared machine). PERF=1 also records a `perf record -g` profile
# of each server's write runs (cpu-clock sampling) into $OUT (default /tmp/nbd-cpu) and
# prints its top symbols (CALLGRAPH=dwarf for user-space stacks); PERFSTAT=1 prints the
# context switches and page faults during the writes (`perf stat`); STRACE=1 prints the syscalls per written GiB (`strace -c -f`).
#
# Usage: benches/nbd/cpu.sh [ours] [nbdkit]
# Environment: REPS (3), SIZE_MIB (512), PORT (10901), OURS_CMD, PERF, CALLGRAPH, PERFSTAT,
# STRACE, OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."

REPS=${REPS:-3}
SIZE_MIB=${SIZE_MIB:-512}
PORT=${PORT:-10901}
OUT=${OUT:-/tmp/nbd-cpu}
URI=nbd://127.0.0.1:$PORT
WORK=$(mktemp -d /dev/shm/remap-nbd-cpu.XXXXXX)
SERVER_PID=
mkdir -p "$OUT"

cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

BIN=${CARGO_TARGET_DIR:-target}/release/remap
OURS_CMD=${OURS_CMD:-"$BIN serve --create"}
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/src.img"
cp "$WORK/src.img" "$WORK/disk.img"

start_ours() {
  rm -f "$WORK/spare.img"
  truncate -s 64M "$WORK/spare.img"
  # shellcheck disable=SC2086
  RUST_LOG=warn $OURS_CMD "$WORK/disk.img" "$WORK/spare.img" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
}
start_nbdkit() {
  nbdkit -f -i 127.0.0.1 -p "$PORT" file "$WORK/disk.img" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
}
wait_ready() {
  for _ in $(seq 200); do
    nbdinfo --size "$URI" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "cpu.sh: server did not come up" >&2
  cat "$WORK/server.log" >&2
  exit 1
}
# CPU seconds (user + system) of the server so far, all threads.
cpu() { awk -v t="$(getconf CLK_TCK)" '{ print ($14 + $15) / t }' "/proc/$SERVER_PID/stat"; }

for server in "${@:-ours nbdkit}"; do
  for s in $server; do
    "start_$s"
    wait_ready
    c0=$(cpu)
    if [ "${PERF:-0}" = 1 ]; then
      perf record -q -e cpu-clock -F 2000 --call-graph "${CALLGRAPH:-fp}" -p "$SERVER_PID" -o "$OUT/$s.perf" 2>/dev/null &
      PERF_PID=$!
      sleep 0.3
    fi
    if [ "${PERFSTAT:-0}" = 1 ]; then
      perf stat -e task-clock,context-switches,page-faults -p "$SERVER_PID" -o "$OUT/$s.stat" &
      STAT_PID=$!
      sleep 0.3
    fi
    if [ "${STRACE:-0}" = 1 ]; then
      strace -c -f -p "$SERVER_PID" -o "$OUT/$s.strace" &
      STRACE_PID=$!
      sleep 0.3
    fi
    t0=$(date +%s.%N)
    for _ in $(seq "$REPS"); do nbdcopy "$WORK/src.img" "$URI"; done
    t1=$(date +%s.%N)
    c1=$(cpu)
    if [ "${PERF:-0}" = 1 ]; then kill -INT "$PERF_PID"; wait "$PERF_PID" || true; fi
    if [ "${STRACE:-0}" = 1 ]; then kill -INT "$STRACE_PID"; wait "$STRACE_PID" || true; fi
    if [ "${PERFSTAT:-0}" = 1 ]; then kill -INT "$STAT_PID"; wait "$STAT_PID" || true; fi
    for _ in $(seq "$REPS"); do nbdcopy "$URI" null:; done
    t2=$(date +%s.%N)
    c2=$(cpu)
    awk -v s="$s" -v w="$(echo "$c1 - $c0" | bc -l)" -v r="$(echo "$c2 - $c1" | bc -l)" \
      -v g="$(echo "$REPS * $SIZE_MIB / 1024" | bc -l)" \
      -v tw="$(echo "$t1 - $t0" | bc -l)" -v tr="$(echo "$t2 - $t1" | bc -l)" \
      'BEGIN { printf "%-7s CPU s per GiB: write %.3f  read %.3f   MiB/s: write %.0f  read %.0f\n",
               s, w / g, r / g, g * 1024 / tw, g * 1024 / tr }'
    if [ "${PERFSTAT:-0}" = 1 ]; then
      echo "$s during the writes ($(echo "$REPS * $SIZE_MIB" | bc) MiB):"
      grep -E "task-clock|context-switches|page-faults" "$OUT/$s.stat" || true
    fi
    if [ "${STRACE:-0}" = 1 ]; then
      echo "$s syscalls during the writes ($(echo "$REPS * $SIZE_MIB" | bc) MiB):"
      head -n 14 "$OUT/$s.strace" || true
    fi
    if [ "${PERF:-0}" = 1 ]; then
      perf report -i "$OUT/$s.perf" --no-children --sort symbol --stdio -g none 2>/dev/null |
        grep -E "^ +[0-9]" | head -n 25 || true
    fi
    kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
  done
done
