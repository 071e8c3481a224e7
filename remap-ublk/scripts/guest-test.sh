#!/usr/bin/env bash
# `remap attach` over ublk in real kernels, under qemu TCG, with the initramfs and boot
# machinery of remap-kmod's guest test (remap-kmod/scripts/{kernels,build,mkinitramfs}.sh,
# guest-lib.sh) and the checks in guest/ublk.sh:
#
#   Debian 6.12 (ublk_drv, a module there): boot 5: attach, I/O semantics, detach,
#     kill -9 under a write load and --recover; then the host checks the pair with
#     `remap dump` and `remap check`. Boots 6 and 7: the filesystem suite of
#     remap-kmod/scripts/guest/fs.sh on /dev/ublkbN (ext4 and xfs over failing segments,
#     checksummed files, fsck clean, power-off with writes in flight, after the reboot fsck
#     clean and the files verify); the host checks that the remaps lie in the segments.
#   Debian 6.1 (no ublk): one boot (phase ublknone): the refusal changes nothing.
#
#   guest-test.sh [6.1|6.12|all]        (default: all)
#
# Environment: REMAP_GUEST_TIMEOUT (seconds per boot, default 300), REMAP_BIN (a built
# `remap` binary; default: built here with cargo), REMAP_KCACHE (as kernels.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
kmod=$repo/remap-kmod/scripts
timeout_s=${REMAP_GUEST_TIMEOUT:-300}

log() { echo "ublk-guest-test: $*" >&2; }
die() { echo "ublk-guest-test: FAILED: $*" >&2; exit 1; }

case "${1:-all}" in
  all) flavours="6.1 6.12" ;;
  6.1 | 6.12) flavours=$1 ;;
  *) die "usage: guest-test.sh [6.1|6.12|all]" ;;
esac

# shellcheck source=../../remap-kmod/scripts/guest-lib.sh
. "$kmod/guest-lib.sh"

guest_prerequisites

for flav in $flavours; do
  t0=$SECONDS
  benv=$("$kmod/build.sh" "$flav")
  kenv=$("$kmod/kernels.sh" "$flav" 2>/dev/null | tail -n1)
  # shellcheck disable=SC1090
  . "$kenv"
  # shellcheck disable=SC1090
  . "$benv"
  wd=$repo/.work/guest-ublk/$KREL
  rm -rf "$wd"
  mkdir -p "$wd"
  truncate -s 64M "$wd/main.img"
  truncate -s 8M "$wd/spare.img"
  "$REMAP_BIN" create "$wd/main.img" "$wd/spare.img" >/dev/null || die "remap create failed"
  # The filesystem pairs (guest/fs.sh): 512 MiB main backings, 16 MiB spares.
  for fs in ext4 xfs; do
    truncate -s 512M "$wd/fs-$fs.img"
    truncate -s 16M "$wd/fs-$fs-spare.img"
    "$REMAP_BIN" create "$wd/fs-$fs.img" "$wd/fs-$fs-spare.img" >/dev/null ||
      die "remap create of the $fs spare failed"
  done
  head -c 65536 /dev/urandom >"$wd/pat64k"
  head -c 4194304 /dev/urandom >"$wd/pat4m"
  REMAP_BIN=$REMAP_BIN "$kmod/mkinitramfs.sh" "$kenv" "$benv" "$wd/initrd.gz" "$wd/pat64k" "$wd/pat4m"

  if [ "$flav" = 6.1 ]; then
    log "$KREL: boot ublknone, the refusal (qemu TCG)"
    rc=0
    qemu_boot ublknone "$wd/boot-ublknone.log" "$wd/main.img" "$wd/spare.img" || rc=$?
    judge ublknone "$wd/boot-ublknone.log" "$rc"
  else
    log "$KREL: boot 5, remap attach (qemu TCG)"
    rc=0
    qemu_boot 5 "$wd/boot5.log" "$wd/main.img" "$wd/spare.img" || rc=$?
    judge 5 "$wd/boot5.log" "$rc"
    dump=$("$REMAP_BIN" dump "$wd/main.img" "$wd/spare.img" --json) || die "$KREL: remap dump failed"
    remapped=$(echo "$dump" | grep -o '"block":[0-9]*,"state":"remapped"' | sed 's/"block":\([0-9]*\),.*/\1/' | tr '\n' ' ')
    [ "$remapped" = "1000 1001 1002 1003 " ] ||
      die "$KREL: remap dump lists remapped blocks '$remapped', expected the four written over the error segment"
    pending=$(echo "$dump" | grep -o '"block":[0-9]*,"state":"pending"' | sed 's/"block":\([0-9]*\),.*/\1/' | tr '\n' ' ')
    [ "$pending" = "1005 " ] || die "$KREL: remap dump lists pending blocks '$pending', expected 1005 (the failed read)"
    "$REMAP_BIN" check "$wd/main.img" "$wd/spare.img" >"$wd/check.log" 2>&1 ||
      die "$KREL: remap check of the spare the ublk daemon wrote failed: $(cat "$wd/check.log")"
    log "$KREL: remap dump shows the moves and the pending block; remap check passes"

    t_fs=$SECONDS
    fs_disks=("$wd/main.img" "$wd/spare.img" "$wd/fs-ext4.img" "$wd/fs-ext4-spare.img"
      "$wd/fs-xfs.img" "$wd/fs-xfs-spare.img")
    log "$KREL: boot 6, filesystems on /dev/ublkbN (qemu TCG)"
    rc=0
    qemu_boot 6 "$wd/boot6.log" "${fs_disks[@]}" || rc=$?
    judge 6 "$wd/boot6.log" "$rc"
    log "$KREL: boot 7, after the power-off with writes in flight (qemu TCG)"
    fsdata=$(fs_data_params "$wd/boot6.log")
    rc=0
    BOOT_APPEND=$fsdata qemu_boot 7 "$wd/boot7.log" "${fs_disks[@]}" || rc=$?
    judge 7 "$wd/boot7.log" "$rc"
    for fs in ext4 xfs; do
      check_fs_remaps "$fs" "$wd/boot6.log"
      "$REMAP_BIN" check "$wd/fs-$fs.img" "$wd/fs-$fs-spare.img" >"$wd/check-$fs.log" 2>&1 ||
        die "$KREL: remap check of the $fs spare failed: $(cat "$wd/check-$fs.log")"
    done
    log "$KREL: filesystems on ublk took $((SECONDS - t_fs))s (boots 6 and 7, dumps, checks)"
  fi
  log "$KREL: passed in $((SECONDS - t0))s"
done
log "all kernels passed: $flavours"
