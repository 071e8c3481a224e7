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
# devices, and ext4 on `remap serve` + the kernel's nbd client, over failing segments,
# power off with writes in flight and check the filesystems and `remap dump` after the
# reboot (guest/fs.sh). Boots 5 and 6 boot a Debian systemd root with remap installed where
# a package puts it (mkroot.sh, bootroot.sh): /etc/remaptab and /etc/fstab bring a pair up
# and mount it, remap-serve@ and nbd@ serve and mount another, files verify after a
# reboot, `remap dump` lists the remaps (guest/boot.sh). Fails loudly on a
# guest panic, oops, BUG or WARN, on a hang (timeout), on any FAIL line, and when a
# phase's SUMMARY is missing or does not account for every check it planned.
#
# Environment: REMAP_GUEST_TIMEOUT (seconds per boot, default 300; REMAP_ROOT_TIMEOUT for
# the systemd boots 8 and 9, default 600), REMAP_BOOT_KERNELS (the kernels the boot path
# runs on, default "6.1 6.12"), REMAP_BIN (a built
# `remap` binary; default: built here with cargo).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
crate=$(cd "$here/.." && pwd)
repo=$(cd "$crate/.." && pwd)
timeout_s=${REMAP_GUEST_TIMEOUT:-300}
# A systemd boot does more than the busybox guests: its own limit (boots 8 and 9).
root_timeout_s=${REMAP_ROOT_TIMEOUT:-600}

log() { echo "guest-test: $*" >&2; }
die() { echo "guest-test: FAILED: $*" >&2; exit 1; }

case "${1:-all}" in
  all) flavours="6.1 6.12" ;;
  6.1 | 6.12) flavours=$1 ;;
  *) die "usage: guest-test.sh [6.1|6.12|all]" ;;
esac

# shellcheck source=guest-lib.sh
. "$here/guest-lib.sh"

guest_prerequisites
log "building the dm-log-writes replay check"
(cd "$repo" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target} cargo build -q -p remap-kmod --release --example log_replay)
LOG_REPLAY=${CARGO_TARGET_DIR:-$repo/target}/release/examples/log_replay
[ -x "$LOG_REPLAY" ] || die "no log_replay at $LOG_REPLAY"

# One boot of this test's disks (guest-lib.sh: qemu_boot, judge).
boot() { # phase log [more kernel parameters]
  BOOT_APPEND=${3:-} qemu_boot "$1" "$2" "$wd/main.img" "$wd/spare.img" "$wd/blank.img" \
    "$wd/small.img" "$wd/logspare.img" "$wd/log.img" "$wd/fs-ext4.img" \
    "$wd/fs-ext4-spare.img" "$wd/fs-xfs.img" "$wd/fs-xfs-spare.img" "$wd/fs-nbd.img" \
    "$wd/fs-nbd-spare.img"
}

# One boot of the systemd root (bootroot.sh): the same kernel and initramfs, whose /init
# mounts remap.root and hands over to systemd. The main disks fail a run of blocks (qemu's
# blkdebug) and carry serial numbers, so the guest finds them in /dev/disk/by-id.
boot_root() { # phase log
  local phase=$1 out=$2 rc=0 pair
  local disks=(-drive "if=none,id=root,format=raw,cache=unsafe,file=$wd/boot-root.img"
    -device virtio-blk-pci,drive=root,serial=remap-root)
  for pair in main:boot-main smain:boot-smain; do
    disks+=(-drive "if=none,id=${pair%%:*},format=raw,cache=unsafe,file=blkdebug:$wd/boot-rules.conf:$wd/${pair#*:}.img"
      -device "virtio-blk-pci,drive=${pair%%:*},serial=remap-${pair%%:*}")
  done
  for pair in spare:boot-spare sspare:boot-sspare; do
    disks+=(-drive "if=none,id=${pair%%:*},format=raw,cache=unsafe,file=$wd/${pair#*:}.img"
      -device "virtio-blk-pci,drive=${pair%%:*},serial=remap-${pair%%:*}")
  done
  # -nodefaults: no CD-ROM, floppy, VGA or NIC for udev's coldplug to load drivers for.
  # no_timer_check: under a loaded host, TCG is too slow for the kernel's check of the
  # timer interrupt, which then hangs early boot ("8254 timer not connected to IO-APIC").
  timeout --foreground "$root_timeout_s" qemu-system-x86_64 -accel tcg,thread=single -cpu max -m 1024 -smp 2 \
    -nodefaults -display none -serial stdio -no-reboot \
    -kernel "$KIMAGE" -initrd "$wd/initrd.gz" \
    -append "console=ttyS0 panic=-1 oops=panic panic_on_warn=1 loglevel=4 rdinit=/init remap.root=remap-root remap.phase=$phase systemd.show_status=0 modprobe.blacklist=floppy no_timer_check" \
    "${disks[@]}" </dev/null 2>&1 | tr -d '\r' > "$out" || rc=$?
  return "$rc"
}

# The remapped blocks `remap dump` finds on the spare, sorted, one per line.
dumped_remaps() { dump_remapped "$wd/main.img" "$wd/spare.img"; }

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

# The boot path's pairs: every remapped block lies in the run the disks fail, and there
# are as many as the guest counted (BOOTREMAPS, after the reboot).
check_boot_remaps() { # pair main spare
  local remapped first last want
  remapped=$(dump_remapped "$wd/$2.img" "$wd/$3.img") ||
    die "$KREL: remap dump of the boot-path pair $1 failed"
  read -r first last <"$wd/boot-fail-run"
  want=$(sed -n "s/^BOOTREMAPS $1 \([0-9]*\)$/\1/p" "$wd/boot9.log")
  [ -n "$want" ] && [ "$want" -gt 0 ] || die "$KREL: boot path: the guest counted no remaps on $1"
  [ "$(echo "$remapped" | grep -c .)" = "$want" ] ||
    die "$KREL: boot path: remap dump lists $(echo "$remapped" | grep -c .) remaps on $1, the guest counted $want"
  echo "$remapped" | awk -v lo="$first" -v hi="$last" '$1 < lo || $1 > hi { bad = 1 } END { exit bad }' ||
    die "$KREL: boot path: $1 has remaps outside the failing run $first-$last: $(echo $remapped)"
  "$REMAP_BIN" check "$wd/$2.img" "$wd/$3.img" >"$wd/check-$1.log" 2>&1 ||
    die "$KREL: boot path: remap check of $1 after the clean poweroff failed: $(cat "$wd/check-$1.log")"
  log "$KREL: boot path: remap dump lists the $want remaps of $1, all in the failing run $first-$last; remap check passes"
}

# The kernels the boot path (boots 8 and 9) runs on: both, unless REMAP_BOOT_KERNELS names
# fewer (each costs about 2.5 minutes of TCG, twice that on a loaded host).
boot_kernels=${REMAP_BOOT_KERNELS:-6.1 6.12}
boot_path() { case " $boot_kernels " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
root_tar=
for flav in $flavours; do
  boot_path "$flav" || continue
  t_root=$SECONDS
  root_tar=$($SUDO env REMAP_KCACHE="${REMAP_KCACHE:-}" "$here/mkroot.sh") || die "the systemd root (mkroot.sh) failed"
  log "systemd root for the boot path: $root_tar ($((SECONDS - t_root))s)"
  break
done

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
  for fs in ext4 xfs nbd; do
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
  for fs in ext4 xfs nbd; do check_fs_remaps "$fs"; done
  log "$KREL: filesystems on top took $((SECONDS - t_fs))s (boots 3 and 4 and the dumps)"

  if boot_path "$flav"; then
    t_boot=$SECONDS
    $SUDO env REMAP_BIN="$REMAP_BIN" "$here/bootroot.sh" "$kenv" "$benv" "$root_tar" "$wd" ||
      die "$KREL: the boot-path disks (bootroot.sh) failed"
    log "$KREL: boot 8, the boot path in a systemd root (qemu TCG)"
    rc=0
    boot_root 8 "$wd/boot8.log" || rc=$?
    judge 8 "$wd/boot8.log" "$rc"
    log "$KREL: boot 9, the boot path again after a reboot (qemu TCG)"
    rc=0
    boot_root 9 "$wd/boot9.log" || rc=$?
    judge 9 "$wd/boot9.log" "$rc"
    check_boot_remaps data boot-main boot-spare
    check_boot_remaps served boot-smain boot-sspare
    log "$KREL: the boot path took $((SECONDS - t_boot))s (boots 8 and 9 and the disks)"
  else
    log "$KREL: no boot path on this kernel (REMAP_BOOT_KERNELS=$boot_kernels)"
  fi
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
