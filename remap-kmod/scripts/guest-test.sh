#!/usr/bin/env bash
# The dm-remap-v4 acceptance test in real kernels: for each Debian kernel (6.1, 6.12),
# build the module, format a spare on the host with `remap create`, boot the kernel under
# qemu (TCG) twice with guest/test.sh, and check what the guest reports and what the host
# then reads from the spare with `remap dump` and `remap check`.
#
#   guest-test.sh [6.1|6.12|all]        (default: all)
#
# Boot 1 runs everything and ends with a remapped write followed at once by a forced
# power-off; boot 2 checks that remap and every earlier one survived, and runs `remap
# table/activate/deactivate` and their refusals. Boots 3 and 4 put ext4 and xfs on remap
# devices over failing segments, power off with writes in flight and check the filesystems
# and `remap dump` after the reboot (guest/fs.sh). Fails loudly on a
# guest panic, oops, BUG or WARN, on a hang (timeout), on any FAIL line, and when a
# phase's SUMMARY is missing or does not account for every check it planned.
#
# Environment: REMAP_GUEST_TIMEOUT (seconds per boot, default 300), REMAP_BIN (a built
# `remap` binary; default: built here with cargo).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
crate=$(cd "$here/.." && pwd)
repo=$(cd "$crate/.." && pwd)
timeout_s=${REMAP_GUEST_TIMEOUT:-300}

log() { echo "guest-test: $*" >&2; }
die() { echo "guest-test: FAILED: $*" >&2; exit 1; }

case "${1:-all}" in
  all) flavours="6.1 6.12" ;;
  6.1 | 6.12) flavours=$1 ;;
  *) die "usage: guest-test.sh [6.1|6.12|all]" ;;
esac

# shellcheck source=guest-lib.sh
. "$here/guest-lib.sh"

for tool in qemu-system-x86_64 busybox dmsetup cpio xz objcopy; do
  command -v "$tool" >/dev/null || die "$tool is not installed (scripts/test.sh installs it)"
done

if [ -z "${REMAP_BIN:-}" ]; then
  log "building the remap CLI"
  (cd "$repo" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target} cargo build -q -p remap-cli --release)
  REMAP_BIN=${CARGO_TARGET_DIR:-$repo/target}/release/remap
fi
[ -x "$REMAP_BIN" ] || die "no remap binary at $REMAP_BIN"
log "building the dm-log-writes replay check"
(cd "$repo" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target} cargo build -q -p remap-kmod --release --example log_replay)
LOG_REPLAY=${CARGO_TARGET_DIR:-$repo/target}/release/examples/log_replay
[ -x "$LOG_REPLAY" ] || die "no log_replay at $LOG_REPLAY"

# One boot of this test's disks (guest-lib.sh: qemu_boot, judge).
boot() { # phase log [more kernel parameters]
  BOOT_APPEND=${3:-} qemu_boot "$1" "$2" "$wd/main.img" "$wd/spare.img" "$wd/blank.img" \
    "$wd/small.img" "$wd/logspare.img" "$wd/log.img" "$wd/fs-ext4.img" \
    "$wd/fs-ext4-spare.img" "$wd/fs-xfs.img" "$wd/fs-xfs-spare.img"
}

# The remapped blocks `remap dump` finds on the spare, sorted, one per line.
dumped_remaps() {
  "$REMAP_BIN" dump "$wd/main.img" "$wd/spare.img" --json |
    grep -o '"block":[0-9]*,"state":"remapped"' | sed 's/"block":\([0-9]*\),.*/\1/' | sort -n
}

compare_dump() { # label
  local got want
  got=$(dumped_remaps) || die "$KREL: remap dump failed ($1)"
  want=$(sed -n 's/^EXPECT remapped \([0-9]*\)$/\1/p' "$wd/boot1.log" | sort -n)
  [ -n "$want" ] || die "$KREL: the guest printed no EXPECT lines"
  if [ "$got" != "$want" ]; then
    echo "expected remaps: $(echo $want)" >&2
    echo "remap dump:      $(echo $got)" >&2
    die "$KREL: remap dump of the spare ($1) does not list exactly the remaps the kernel made"
  fi
  log "$KREL: remap dump ($1) lists exactly the $(echo "$want" | wc -l) remaps the kernel made"
  if "$REMAP_BIN" dump "$wd/main.img" "$wd/spare.img" --json | grep -q '"state":"pending"'; then
    die "$KREL: remap dump ($1) shows pending blocks; the guest rewrote them all"
  fi
}

for flav in $flavours; do
  t0=$SECONDS
  benv=$("$here/build.sh" "$flav")
  kenv=$("$here/kernels.sh" "$flav" 2>/dev/null | tail -n1)
  # shellcheck disable=SC1090
  . "$kenv"
  # shellcheck disable=SC1090
  . "$benv"
  wd=$repo/.work/guest/$KREL
  rm -rf "$wd"
  mkdir -p "$wd"
  truncate -s 32M "$wd/main.img"
  truncate -s 8M "$wd/spare.img"
  truncate -s 4M "$wd/blank.img"
  "$REMAP_BIN" create "$wd/main.img" "$wd/spare.img" --block-size 4096 >"$wd/create.log" ||
    die "remap create failed: $(cat "$wd/create.log")"
  # The small spare: 4 spare blocks for a 1 MiB main device (an error target in the guest).
  truncate -s 1M "$wd/main2.img"
  truncate -s 1M "$wd/small.img"
  "$REMAP_BIN" create "$wd/main2.img" "$wd/small.img" --spare-blocks 4 --journal-blocks 4 \
    --json >"$wd/create-small.json" || die "remap create of the small spare failed"
  pool_offset=$(grep -o '"pool_offset": *[0-9]*' "$wd/create-small.json" | grep -o '[0-9]*$')
  [ -n "$pool_offset" ] || die "no pool_offset in $wd/create-small.json"
  echo $((pool_offset / 4096)) >"$wd/small-pool-block"
  # The spare recorded by dm-log-writes, kept as it was before the guest wrote to it.
  truncate -s 1M "$wd/main3.img"
  truncate -s 2M "$wd/logspare.img"
  truncate -s 16M "$wd/log.img"
  "$REMAP_BIN" create "$wd/main3.img" "$wd/logspare.img" --journal-blocks 4 >/dev/null ||
    die "remap create of the logged spare failed"
  cp "$wd/logspare.img" "$wd/logspare-before.img"
  # The filesystem-on-top pairs (guest/fs.sh): 512 MiB main backings, 16 MiB spares.
  for fs in ext4 xfs; do
    truncate -s 512M "$wd/fs-$fs.img"
    truncate -s 16M "$wd/fs-$fs-spare.img"
    "$REMAP_BIN" create "$wd/fs-$fs.img" "$wd/fs-$fs-spare.img" >/dev/null ||
      die "remap create of the $fs spare failed"
  done
  head -c 65536 /dev/urandom >"$wd/pat64k"
  head -c 4194304 /dev/urandom >"$wd/pat4m"
  REMAP_BIN=$REMAP_BIN "$here/mkinitramfs.sh" "$kenv" "$benv" "$wd/initrd.gz" "$wd/pat64k" "$wd/pat4m" \
    "$wd/small-pool-block"

  log "$KREL: boot 1 (qemu TCG)"
  rc=0
  boot 1 "$wd/boot1.log" || rc=$?
  judge 1 "$wd/boot1.log" "$rc"
  # The crash image, before any clean shutdown: the last remap must be in the journal.
  compare_dump "after the forced power-off"
  small=$("$REMAP_BIN" dump "$wd/main2.img" "$wd/small.img" --json) || die "$KREL: remap dump of the small spare failed"
  small_remaps=$(echo "$small" | grep -o '"block":[0-9]*,"state":"remapped","spare_block":[0-9]*' |
    sed 's/"block":\([0-9]*\),"state":"remapped","spare_block":\([0-9]*\)/\1:\2/' | tr '\n' ' ')
  [ "$small_remaps" = "0:2 1:3 " ] || die "$KREL: small spare remaps are '$small_remaps', expected '0:2 1:3 '"
  echo "$small" | grep -q '"retired_spares":\[0,1\]' || die "$KREL: small spare: spare blocks 0 and 1 are not retired: $small"
  log "$KREL: remap dump of the small spare shows the two retired spare blocks and the moves"

  "$LOG_REPLAY" --log "$wd/log.img" --spare "$wd/logspare-before.img" --data "$wd/pat4m" \
    --seeds 3 >&2 || die "$KREL: the kernel's writes to the spare do not survive every crash point"

  log "$KREL: boot 2 (qemu TCG)"
  rc=0
  boot 2 "$wd/boot2.log" || rc=$?
  judge 2 "$wd/boot2.log" "$rc"
  compare_dump "after a clean remove"
  "$REMAP_BIN" check "$wd/main.img" "$wd/spare.img" >"$wd/check.log" 2>&1 ||
    die "$KREL: remap check of the spare the kernel wrote failed: $(cat "$wd/check.log")"
  log "$KREL: remap check passes on the spare the kernel wrote"

  t_fs=$SECONDS
  log "$KREL: boot 3, filesystems on top (qemu TCG)"
  rc=0
  boot 3 "$wd/boot3.log" || rc=$?
  judge 3 "$wd/boot3.log" "$rc"
  log "$KREL: boot 4, after the power-off with writes in flight (qemu TCG)"
  # The data run phase 3 placed under a file (guest/fs.sh), for the same tables after the crash.
  fsdata=$(fs_data_params "$wd/boot3.log")
  rc=0
  boot 4 "$wd/boot4.log" "$fsdata" || rc=$?
  judge 4 "$wd/boot4.log" "$rc"
  for fs in ext4 xfs; do check_fs_remaps "$fs"; done
  log "$KREL: filesystems on top took $((SECONDS - t_fs))s (boots 3 and 4 and the dumps)"
  grep '^PERF' "$wd/boot1.log" >"$wd/perf.txt"
  # Best of the rounds (interference from the host only ever slows a run down) and mean.
  awk -v k="$KREL" '{ key = $2 " " $3; v = $(NF-1); s[key] += v; n[key]++; if (v > b[key]) b[key] = v }
    END {
      split("write read", o, " ")
      for (i = 1; i <= 2; i++) {
        r = o[i] " rmp"; l = o[i] " lin"
        printf "guest-test: %s: dd %s, direct, 1 MiB requests, best of %d: dm-remap-v4 %d KiB/s, linear %d KiB/s (%.0f%%); mean %d vs %d KiB/s\n", k, o[i], n[r], b[r], b[l], 100 * b[r] / b[l], s[r] / n[r], s[l] / n[l]
      }
    }' "$wd/perf.txt" | tee "$wd/perf-summary.txt" >&2
  log "$KREL: passed in $((SECONDS - t0))s"
done
log "all kernels passed: $flavours"
