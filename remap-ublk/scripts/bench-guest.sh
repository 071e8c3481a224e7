#!/usr/bin/env bash
# fio in one Debian 6.12 guest under qemu TCG, same backing disks, one frontend after the
# other: the raw virtio disk, dm-remap-v4, /dev/ublkbN (`remap attach`) and /dev/nbd0 on
# `remap serve` (nbd-client over loopback TCP). 4 KiB random read/write at QD1 and QD32,
# 1 MiB sequential read/write (libaio, O_DIRECT). Prints each figure and its ratio to the
# raw disk, and ublk against nbd and dm-remap-v4. Figures, not a test: TCG emulates the
# CPU, so only ratios within one run mean anything, and other work on the host slows any
# frontend at random.
#
#   bench-guest.sh            (REMAP_KCACHE as kernels.sh; 5 s per job)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
kmod=$repo/remap-kmod/scripts
timeout_s=${REMAP_GUEST_TIMEOUT:-600}
log() { echo "ublk-bench: $*" >&2; }
die() { echo "ublk-bench: FAILED: $*" >&2; exit 1; }
# shellcheck source=../../remap-kmod/scripts/guest-lib.sh
. "$kmod/guest-lib.sh"
for tool in fio nbd-client; do
  command -v "$tool" >/dev/null || die "$tool is not installed (scripts/install-deps.sh installs it)"
done
if [ -z "${REMAP_BIN:-}" ]; then
  (cd "$repo" && cargo build -q -p remap-cli --release)
  REMAP_BIN=$repo/target/release/remap
fi

benv=$("$kmod/build.sh" 6.12)
kenv=$("$kmod/kernels.sh" 6.12 2>/dev/null | tail -n1)
# shellcheck disable=SC1090
. "$kenv"
# shellcheck disable=SC1090
. "$benv"
wd=$repo/.work/bench-ublk/$KREL
rm -rf "$wd"
mkdir -p "$wd/extra/sbin" "$wd/extra/lib/modules"
truncate -s 512M "$wd/main.img"
truncate -s 16M "$wd/spare.img"
"$REMAP_BIN" create "$wd/main.img" "$wd/spare.img" >/dev/null
head -c 65536 /dev/urandom >"$wd/pat64k"
head -c 4194304 /dev/urandom >"$wd/pat4m"
REMAP_BIN=$REMAP_BIN "$kmod/mkinitramfs.sh" "$kenv" "$benv" "$wd/base.gz" "$wd/pat64k" "$wd/pat4m"
# fio, nbd-client and nbd.ko in a second archive, appended (the kernel unpacks both).
for tool in fio nbd-client; do
  p=$(command -v "$tool")
  cp "$p" "$wd/extra/sbin/$tool"
  for lib in $(ldd "$p" | grep -o '/[^ ]*'); do
    mkdir -p "$wd/extra$(dirname "$lib")"
    cp -L "$lib" "$wd/extra$lib"
  done
done
xz -dc "$(find "$KMODS" -name nbd.ko.xz | head -n1)" >"$wd/extra/lib/modules/nbd.ko"
(cd "$wd/extra" && find . | cpio -o -H newc --quiet | gzip -1) >"$wd/extra.gz"
cat "$wd/base.gz" "$wd/extra.gz" >"$wd/initrd.gz"

log "$KREL: boot bench (qemu TCG; about 3 minutes)"
rc=0
qemu_boot bench "$wd/bench.log" "$wd/main.img" "$wd/spare.img" || rc=$?
judge bench "$wd/bench.log" "$rc"
grep '^BENCH' "$wd/bench.log" >"$wd/bench.txt"
awk '{ key = $3 " " $4 " QD" $5; split($6, iops, "="); split($7, kib, "=");
       v[$2, key] = ($4 == "1m") ? kib[2] : iops[2]; if (!(key in seen)) { seen[key] = 1; order[++n] = key } }
  END {
    printf "%-22s %10s %10s %10s %10s   %s\n", "job (4k: IOPS, 1m: KiB/s)", "raw", "dm-remap", "ublk", "nbd", "ublk/raw ublk/nbd ublk/dm"
    for (i = 1; i <= n; i++) { k = order[i]; r = v["raw", k]; d = v["dm-remap-v4", k]; u = v["ublk", k]; nb = v["nbd", k]
      printf "%-22s %10d %10d %10d %10d   %8.2f %8.2f %8.2f\n", k, r, d, u, nb, (r ? u / r : 0), (nb ? u / nb : 0), (d ? u / d : 0) }
  }' "$wd/bench.txt" | tee "$wd/ratios.txt"
