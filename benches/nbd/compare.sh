#!/usr/bin/env bash
# Compare our NBD server with nbdkit's file plugin, same file, same clients, same run.
#
# One 1 GiB file of random data on tmpfs (/dev/shm) is served in turn by
#   - ours:   `remap serve MAIN SPARE --create`: the remapping device over the file, with its
#             spare (metadata and pool, 64 MiB) on tmpfs too; started by start_ours() below;
#   - nbdkit: `nbdkit file`.
# Each server runs REPS times (alternating which goes first); each run measures
#   - sequential read and write with nbdcopy (MiB/s; nbdcopy's defaults: 4 connections),
#   - 4 KiB random read and write IOPS with fio's nbd engine at queue depth 1 and 32.
# The table shows medians and the ratio ours/nbdkit (above 1.00 = ours is faster), then the
# server CPU per MiB or per I/O for each row and the ratio nbdkit/ours (above 1.00 = ours
# spends less), which other work on the machine disturbs far less than the rates, and last
# a reference for the nbdcopy rows: nbdcopy against nbdkit servers that do next to nothing.
#
# Usage: benches/nbd/compare.sh            (about 3 minutes)
# Environment: REPS (3), RUNTIME seconds per fio run (4), SIZE_MIB (1024), PORT (10900),
#              OURS_CMD (the server command; default: the release `remap serve --create`).
set -euo pipefail
cd "$(dirname "$0")/../.."

REPS=${REPS:-3}
RUNTIME=${RUNTIME:-4}
SIZE_MIB=${SIZE_MIB:-1024}
PORT=${PORT:-10900}
WORK=$(mktemp -d /dev/shm/remap-nbd-bench.XXXXXX)
IMG=$WORK/disk.img
SRC=$WORK/src.img
URI=nbd://127.0.0.1:$PORT
SERVER_PID=

need() { command -v "$1" >/dev/null || { echo "compare.sh: $1 is missing: apt-get install $2" >&2; exit 1; }; }
need nbdkit nbdkit
need nbdcopy libnbd-bin
need nbdinfo libnbd-bin
need fio fio
need jq jq

cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "building the release server..." >&2
cargo build -q --release -p remap-cli
BIN=${CARGO_TARGET_DIR:-target}/release/remap
OURS_CMD=${OURS_CMD:-"$BIN serve --create"}
SPARE=$WORK/spare.img

echo "writing ${SIZE_MIB} MiB of random data to $WORK..." >&2
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$SRC"
cp "$SRC" "$IMG"

# The server under test. To benchmark `remap serve`, change this function (or OURS_CMD).
start_ours() {
  # A fresh blank spare each run: --create formats it.
  rm -f "$SPARE"
  truncate -s 64M "$SPARE"
  # shellcheck disable=SC2086
  RUST_LOG=warn $OURS_CMD "$IMG" "$SPARE" --listen "127.0.0.1:$PORT" >"$WORK/ours.log" 2>&1 &
  SERVER_PID=$!
}

start_nbdkit() {
  nbdkit -f -i 127.0.0.1 -p "$PORT" file "$IMG" >"$WORK/nbdkit.log" 2>&1 &
  SERVER_PID=$!
}

wait_ready() {
  for _ in $(seq 200); do
    nbdinfo --size "$URI" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "compare.sh: server did not come up" >&2
  cat "$WORK"/*.log >&2
  exit 1
}

stop_server() {
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

# MiB/s for a command that moves SIZE_MIB
rate() {
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" -v m="$SIZE_MIB" 'BEGIN { print m / (b - a) }'
}

# fio's IOPS and total I/Os: "iops ios"
fio_iops() { # rw depth
  fio --name=bench --ioengine=nbd --uri="$URI" --rw="$1" --bs=4k --iodepth="$2" \
    --numjobs=1 --size="${SIZE_MIB}m" --time_based --runtime="$RUNTIME" --norandommap \
    --randrepeat=0 --output-format=json 2>/dev/null |
    sed -n '/^{/,$p' | # fio's nbd engine prints a line before the JSON
    jq -r --arg k "$([ "$1" = randread ] && echo read || echo write)" \
      '"\(.jobs[0][$k].iops | floor) \(.jobs[0][$k].total_ios)"'
}

# CPU seconds (user + system) the server has used so far, all threads.
server_cpu() { awk -v t="$(getconf CLK_TCK)" '{ print ($14 + $15) / t }' "/proc/$SERVER_PID/stat"; }

ROWS=("seq read MiB/s (nbdcopy)" "seq write MiB/s (nbdcopy)" \
  "4k randread IOPS qd1" "4k randread IOPS qd32" "4k randwrite IOPS qd1" "4k randwrite IOPS qd32")

# Each result line: server row value cpu, where cpu is the server's CPU per unit of work
# (microseconds per MiB for the nbdcopy rows, per I/O for the fio rows): steadier than the
# rate when other work shares the CPUs, since time spent waiting for a CPU does not count.
measure() { # server-name
  local c0 c1 r
  c0=$(server_cpu); r=$(rate nbdcopy "$URI" null:); c1=$(server_cpu)
  echo "$1 0 $r $(awk -v a="$c0" -v b="$c1" -v m="$SIZE_MIB" 'BEGIN { print (b - a) * 1e6 / m }')" >>"$WORK/results"
  c0=$(server_cpu); r=$(rate nbdcopy "$SRC" "$URI"); c1=$(server_cpu)
  echo "$1 1 $r $(awk -v a="$c0" -v b="$c1" -v m="$SIZE_MIB" 'BEGIN { print (b - a) * 1e6 / m }')" >>"$WORK/results"
  local row=2
  for point in "randread 1" "randread 32" "randwrite 1" "randwrite 32"; do
    # shellcheck disable=SC2086
    c0=$(server_cpu); set -- "$1" $(fio_iops $point); c1=$(server_cpu)
    echo "$1 $row $2 $(awk -v a="$c0" -v b="$c1" -v n="$3" 'BEGIN { print (b - a) * 1e6 / n }')" >>"$WORK/results"
    row=$((row + 1))
  done
}

: >"$WORK/results"
for rep in $(seq "$REPS"); do
  if [ $((rep % 2)) -eq 1 ]; then order="ours nbdkit"; else order="nbdkit ours"; fi
  for server in $order; do
    echo "run $rep/$REPS: $server" >&2
    "start_$server"
    wait_ready
    measure "$server"
    stop_server
  done
done

median() { # server row [column: 3 rate (default), 4 CPU per unit]
  awk -v s="$1" -v r="$2" -v c="${3:-3}" '$1 == s && $2 == r { print $c }' "$WORK/results" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo
echo "$(nproc) CPUs, ${SIZE_MIB} MiB tmpfs file, $REPS runs each, fio ${RUNTIME}s per point; medians"
printf '%-28s %12s %12s %12s\n' "" "nbdkit" "ours" "ours/nbdkit"
for i in "${!ROWS[@]}"; do
  k=$(median nbdkit "$i")
  o=$(median ours "$i")
  printf '%-28s %12.0f %12.0f %12.2f\n' "${ROWS[$i]}" "$k" "$o" "$(awk -v o="$o" -v k="$k" 'BEGIN { print o / k }')"
done
echo
echo "server CPU per unit (us per MiB for nbdcopy, per I/O for fio); medians"
printf '%-28s %12s %12s %12s\n' "" "nbdkit" "ours" "nbdkit/ours"
for i in "${!ROWS[@]}"; do
  k=$(median nbdkit "$i" 4)
  o=$(median ours "$i" 4)
  label=${ROWS[$i]/ MiB\/s/}
  printf '%-28s %12.1f %12.1f %12.2f\n' "${label/ IOPS/}" "$k" "$o" "$(awk -v o="$o" -v k="$k" 'BEGIN { print k / o }')"
done

# A reference for the nbdcopy rows: the same nbdcopy against servers that do next
# to nothing (`nbdkit pattern` makes data for reads, `nbdkit null` drops writes): how fast
# the client goes on this machine when the server costs little (not a hard ceiling).
: >"$WORK/reference"
for rep in $(seq "$REPS"); do
  nbdkit -f -i 127.0.0.1 -p "$PORT" pattern "${SIZE_MIB}M" >"$WORK/reference.log" 2>&1 &
  SERVER_PID=$!
  wait_ready
  echo "read $(rate nbdcopy "$URI" null:)" >>"$WORK/reference"
  stop_server
  nbdkit -f -i 127.0.0.1 -p "$PORT" null "${SIZE_MIB}M" >"$WORK/reference.log" 2>&1 &
  SERVER_PID=$!
  wait_ready
  echo "write $(rate nbdcopy "$SRC" "$URI")" >>"$WORK/reference"
  stop_server
done
reference() { awk -v r="$1" '$1 == r { print $2 }' "$WORK/reference" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo
echo "reference: the same nbdcopy against nbdkit pattern (reads) and null (writes), servers with next to nothing behind them; medians"
printf '%-28s %12s %12s\n' "" "MiB/s" "/nbdkit"
for r in read write; do
  c=$(reference $r)
  k=$(median nbdkit "$([ $r = read ] && echo 0 || echo 1)")
  printf '%-28s %12.0f %12.2f\n' "seq $r (nbdcopy)" "$c" "$(awk -v c="$c" -v k="$k" 'BEGIN { print c / k }')"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
