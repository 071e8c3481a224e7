#!/bin/sh
# `remap attach` over ublk, in the guest (remap-ublk/scripts/guest-test.sh boots it).
#
#   phase ublknone   a kernel without ublk (Debian 6.1): `remap attach` refuses with one
#                    line naming what to use instead, prints nothing on stdout, and leaves
#                    both devices as they were (hashes)
#   phase 5          (Debian 6.12, ublk_drv loaded by /init) attach, read/write/flush, the
#                    logical block size, a write over failing blocks moves them, a failing
#                    read fails with EIO and returns no data, discard and write-zeroes,
#                    detach; kill -9 of the daemon under a write load, `--recover`, the load
#                    goes on and every acknowledged write reads back
#
# Disks: /dev/vda the main backing (64 MiB), /dev/vdb its spare, formatted on the host.
# The main device "umain" is linear over vda but for blocks 1000-1007 (4 KiB blocks),
# an error target (reads and writes fail).
# Output: RESULT/FAIL/PLAN/SUMMARY lines as remap-kmod's guest tests; the host judges.

# Sourced by remap-kmod's guest/test.sh, whose helpers (ok, bad, check, expect, summary,
# stage) it uses; $phase is the boot's phase.
MAIN=/dev/mapper/umain
SPARE=/dev/vdb
UMAIN_TABLE="0 8000 linear /dev/vda 0
8000 64 error
8064 123008 linear /dev/vda 8064"

# Start `remap attach "$@"` in the background; wait for the line it prints. Sets DAEMON
# (its pid) and DEV (the block device), or returns 1.
attach() {
  rm -f /tmp/attach.out /tmp/attach.err
  remap attach "$@" >/tmp/attach.out 2>/tmp/attach.err &
  DAEMON=$!
  i=0
  while [ ! -s /tmp/attach.out ] && [ $i -lt 600 ]; do
    kill -0 "$DAEMON" 2>/dev/null || break
    sleep 0.1
    i=$((i + 1))
  done
  DEV=$(sed -n '1s/.*"device":"\([^"]*\)".*/\1/p' /tmp/attach.out)
  [ -n "$DEV" ] || { cat /tmp/attach.err; return 1; }
  j=0
  while [ ! -b "$DEV" ] && [ $j -lt 100 ]; do sleep 0.1; j=$((j + 1)); done
  [ -b "$DEV" ]
}

# Blocks of 4 KiB, direct, on the ublk device.
put() { # pattern-file first-block count [skip]
  dd if="/data/$1" of="$DEV" bs=4096 seek="$2" count="$3" skip="${4:-0}" oflag=direct conv=notrunc 2>/dev/null
}
same() { # pattern-file first-block count [skip]
  dd if="$DEV" of=/tmp/got bs=4096 skip="$2" count="$3" iflag=direct 2>/dev/null &&
    dd if="/data/$1" of=/tmp/want bs=4096 skip="${4:-0}" count="$3" 2>/dev/null &&
    cmp -s /tmp/got /tmp/want
}
wr() { put "$@" && same "$@"; }
stack_main() { echo "$UMAIN_TABLE" | dmsetup create --noudevsync umain && dmsetup mknodes umain; }
zeroes() { # a written run zeroed with write-zeroes reads back as zeroes
  put pat64k 2100 16 &&
    /sbin/blkdiscard.util-linux -z -o $((2100 * 4096)) -l 65536 "$DEV" &&
    dd if="$DEV" of=/tmp/z bs=4096 skip=2100 count=16 iflag=direct 2>/dev/null &&
    dd if=/dev/zero of=/tmp/z0 bs=4096 count=16 2>/dev/null &&
    cmp -s /tmp/z /tmp/z0
}
kept_on_main() { # the first 256 blocks, read from main directly after detach
  dd if="$MAIN" of=/tmp/g bs=4096 count=256 iflag=direct 2>/dev/null &&
    dd if=/data/pat4m of=/tmp/w bs=4096 count=256 2>/dev/null && cmp -s /tmp/g /tmp/w
}
status_field() { # name: from `remap status --control --json`
  remap status --control /tmp/u.ctl --json | grep -o "\"$1\": *[0-9]*" | head -n1 | grep -o '[0-9]*$'
}

if [ "$phase" = ublknone ]; then
  echo "PLAN phase=$phase checks=6"
  expect no_control_device absent "$([ -e /dev/ublk-control ] && echo present || echo absent)"
  before=$(md5sum /dev/vda /dev/vdb)
  remap attach /dev/vda /dev/vdb >/tmp/out 2>/tmp/err
  expect refused_exit_status 1 "$?"
  expect one_line 1 "$(wc -l </tmp/err)"
  check says_no_ublk_and_what_instead sh -c "grep -q 'has no ublk' /tmp/err && grep -q 'dm-remap-v4' /tmp/err && grep -q 'remap serve' /tmp/err"
  expect nothing_on_stdout 0 "$(wc -c </tmp/out)"
  expect devices_unchanged "$before" "$(md5sum /dev/vda /dev/vdb)"
  cat /tmp/err
  summary
fi

if [ "$phase" = 5 ]; then
  echo "PLAN phase=5 checks=38"
  stage attach
  check control_device test -c /dev/ublk-control
  check main_stacked stack_main
  check attached attach "$MAIN" "$SPARE" --json --control /tmp/u.ctl --queues 2 --depth 16
  cat /tmp/attach.out
  b=$(basename "$DEV")
  check io_flusher grep -q '"io_flusher":true' /tmp/attach.out
  expect logical_block_size 4096 "$(cat /sys/block/$b/queue/logical_block_size)"
  expect size_bytes 67108864 "$(($(cat /sys/block/$b/size) * 512))"
  expect write_back_cache "write back" "$(cat /sys/block/$b/queue/write_cache)"
  expect fua 1 "$(cat /sys/block/$b/queue/fua)"
  expect queues 2 "$(ls /sys/block/$b/mq | wc -l)"

  stage read-write
  check write_read_back wr pat4m 0 256
  f0=$(status_field flushes)
  check flush sh -c "dd if=/data/pat64k of=$DEV bs=4096 seek=300 count=16 oflag=direct conv=fsync,notrunc 2>/dev/null"
  f1=$(status_field flushes)
  check flush_reached_the_engine [ "${f1:-0}" -gt "${f0:-0}" ]
  check write_over_failing_blocks wr pat64k 1000 4
  expect remaps_after_write 4 "$(status_field remapped)"
  # Block 1005 fails reads and was never written: the read fails, no byte comes back.
  rm -f /tmp/eio
  dd if="$DEV" of=/tmp/eio bs=4096 skip=1005 count=1 iflag=direct 2>/tmp/eio.err
  expect failing_read_fails 1 "$?"
  check failing_read_is_eio grep -q -i 'input/output error' /tmp/eio.err
  expect failing_read_returns_no_data 0 "$(wc -c </tmp/eio)"
  expect failing_read_pending 1 "$(status_field pending)"
  check remapped_blocks_read same pat64k 1000 4
  check discard blkdiscard -o $((2000 * 4096)) -l $((16 * 4096)) "$DEV"
  check write_zeroes zeroes

  stage detach
  check detach remap detach "$DEV"
  wait "$DAEMON"
  expect daemon_exit_status 0 "$?"
  check daemon_summary grep -q '"detached":"/dev/ublkb' /tmp/attach.out
  check device_gone sh -c "[ ! -e /sys/block/$b ]"
  check data_kept_after_detach kept_on_main

  stage kill-9
  # A write load of 160 distinct 64 KiB slots from block 4096; each slot is logged once
  # its write has completed (been acknowledged).
  attach "$MAIN" "$SPARE" --json --depth 16 || bad "attach for the kill test"
  rm -f /tmp/acked /tmp/werr
  (
    i=0
    while [ $i -lt 160 ]; do
      if dd if=/data/pat4m of="$DEV" bs=65536 count=1 skip=$((i % 64)) seek=$((256 + i)) oflag=direct conv=notrunc 2>>/tmp/werr; then
        echo $i >>/tmp/acked
      else
        echo "write $i failed" >>/tmp/werr
      fi
      i=$((i + 1))
    done
  ) &
  writer=$!
  sleep 3
  old=$DAEMON
  kill -9 "$old"
  wait "$old" 2>/dev/null
  acked_at_kill=$(wc -l </tmp/acked)
  echo "GUEST: daemon killed with $acked_at_kill writes acknowledged"
  check device_kept_after_kill test -b "$DEV"
  killed_dev=$DEV
  check recovered attach "$MAIN" "$SPARE" --json --recover
  cat /tmp/attach.out
  expect recovered_same_device "$killed_dev" "$DEV"
  check recovered_flag grep -q '"recovered":true' /tmp/attach.out
  wait "$writer"
  expect load_went_on 160 "$(wc -l </tmp/acked)"
  expect no_write_failed 0 "$(grep -c failed /tmp/werr)"
  bad_slots=0
  for i in $(cat /tmp/acked); do
    dd if="$DEV" of=/tmp/g bs=65536 skip=$((256 + i)) count=1 iflag=direct 2>/dev/null
    dd if=/data/pat4m of=/tmp/w bs=65536 skip=$((i % 64)) count=1 2>/dev/null
    cmp -s /tmp/g /tmp/w || bad_slots=$((bad_slots + 1))
  done
  expect acknowledged_writes_read_back 0 "$bad_slots"
  check detach_after_recovery remap detach "$DEV"
  wait "$DAEMON"
  # SIGTERM from anyone (systemd's stop), not only from `remap detach`: the same orderly
  # stop, status 0, the device removed, the summary printed.
  check attach_for_sigterm attach "$MAIN" "$SPARE" --json
  kill -TERM "$DAEMON"
  wait "$DAEMON"
  expect sigterm_exit_status 0 "$?"
  check sigterm_device_removed sh -c "[ ! -e $DEV ]"
  check sigterm_summary grep -q '"detached":"/dev/ublkb' /tmp/attach.out
  summary
fi

# Phase bench (remap-ublk/scripts/bench-guest.sh; figures, not checks): fio on the raw
# virtio disk, dm-remap-v4, /dev/ublkbN and /dev/nbd0 on `remap serve`, one after another
# over the same backing disks (/dev/vda main, /dev/vdb spare), each job for 5
# seconds: 4 KiB random read and write at QD1 and QD32, 1 MiB sequential read and write.
# Prints "BENCH <frontend> <rw> <bs> <qd> iops=N kib_s=N".
fio_all() { # of $front on $dev
  for job in "randread 4k 1" "randwrite 4k 1" "randread 4k 32" "randwrite 4k 32" "read 1m 4" "write 1m 4"; do
    # shellcheck disable=SC2086
    set -- $job
    fio --name=b --filename="$dev" --direct=1 --rw="$1" --bs="$2" --iodepth="$3" \
      --ioengine=libaio --runtime=5 --time_based --size=128m \
      --output-format=terse --terse-version=3 >/tmp/fio.out 2>/tmp/fio.err ||
      { bad "fio_${front}_$1_$2_$3: $(cat /tmp/fio.err)"; continue; }
    case $1 in
      *read) awk -F';' -v f="$front" -v j="$1 $2 $3" '{printf "BENCH %s %s iops=%d kib_s=%d\n", f, j, $8, $7}' /tmp/fio.out ;;
      *) awk -F';' -v f="$front" -v j="$1 $2 $3" '{printf "BENCH %s %s iops=%d kib_s=%d\n", f, j, $49, $48}' /tmp/fio.out ;;
    esac
  done
}

if [ "$phase" = bench ]; then
  echo "PLAN phase=bench checks=8"
  front=raw dev=/dev/vda
  fio_all
  check dm_activated sh -c "insmod /lib/modules/dm_remap.ko && remap activate rb /dev/vda /dev/vdb >/dev/null"
  front=dm-remap-v4 dev=/dev/mapper/rb
  fio_all
  check dm_deactivated remap deactivate rb
  check ublk_attached attach /dev/vda /dev/vdb --json
  front=ublk dev=$DEV
  fio_all
  check ublk_detached remap detach "$DEV"
  wait "$DAEMON"
  check nbd_module insmod /lib/modules/nbd.ko nbds_max=1
  ip link set lo up
  remap serve /dev/vda /dev/vdb --listen 127.0.0.1:10809 >/tmp/serve.out 2>&1 &
  server=$!
  i=0
  while ! grep -q 'listening on' /tmp/serve.out && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
  check nbd_connected nbd-client 127.0.0.1 10809 /dev/nbd0 -b 4096
  front=nbd dev=/dev/nbd0
  fio_all
  check nbd_disconnected nbd-client -d /dev/nbd0
  kill -TERM "$server"
  wait "$server"
  expect serve_exit_status 143 "$?"
  summary
fi
