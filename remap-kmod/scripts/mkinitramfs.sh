#!/usr/bin/env bash
# Build the guest's initramfs: busybox, dmsetup and its libraries, the `remap` binary
# ($REMAP_BIN, debug info stripped) and its libraries, the kernel modules the
# test needs (with their dependencies, in load order), dm_remap.ko and dm-dust.ko, the
# guest scripts and any data files.
#
#   REMAP_BIN=target/release/remap mkinitramfs.sh <kernel env> <build env> <out.cpio.gz> [data file...]
#
# Modules: virtio (whatever of it is modular on this kernel), virtio_blk, dm-mod (which
# carries the linear and error targets), dm-flakey, dm-log-writes, crc32c, ext4 and xfs. /lib/modules/load-order lists them as
# the guest must insmod them.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
kenv=$1
benv=$2
out=$3
shift 3
# shellcheck disable=SC1090
. "$kenv"
# shellcheck disable=SC1090
. "$benv"

die() { echo "mkinitramfs: error: $*" >&2; exit 1; }
for tool in busybox dmsetup objcopy xz cpio gzip ldd mke2fs e2fsck filefrag mkfs.xfs xfs_repair; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
mkdir -p "$w"/{bin,sbin,proc,sys,dev,tmp,data,lib/modules,mnt}

cp "$(command -v busybox)" "$w/bin/busybox"
bb_ldd=$(ldd "$w/bin/busybox" 2>&1 || true)
case "$bb_ldd" in
  *"not a dynamic executable"*) ;;
  *) die "busybox is not static (install busybox-static)" ;;
esac

# dmsetup and remap are dynamic: bring their libraries and loader along.
with_libs() { # binary
  for lib in $(ldd "$1" | grep -o '/[^ ]*'); do
    mkdir -p "$w$(dirname "$lib")"
    cp -L "$lib" "$w$lib"
  done
}
dms=$(command -v dmsetup)
cp "$dms" "$w/sbin/dmsetup"
with_libs "$dms"
[ -x "${REMAP_BIN:-}" ] || die "REMAP_BIN does not name a built remap binary"
objcopy --strip-debug "$REMAP_BIN" "$w/sbin/remap"
with_libs "$REMAP_BIN"
# The filesystem tools of the filesystem-on-top phases, with Debian's mke2fs defaults
# (filefrag finds where a file's data went, for the failing run under it).
for tool in mke2fs e2fsck filefrag mkfs.xfs xfs_repair; do
  p=$(command -v "$tool") || die "$tool is not installed (e2fsprogs, xfsprogs)"
  cp "$p" "$w/sbin/$tool"
  with_libs "$p"
done
# util-linux's blkdiscard for write-zeroes (-z; busybox's has no -z), under its own name.
p=$(command -v blkdiscard) || die "blkdiscard is not installed (util-linux)"
cp "$p" "$w/sbin/blkdiscard.util-linux"
with_libs "$p"
mkdir -p "$w/etc"
cp /etc/mke2fs.conf "$w/etc/mke2fs.conf"
ln -s /proc/mounts "$w/etc/mtab"

# Module dependencies from each module's .modinfo (the unpacked kernel has no modules.dep).
tmpko=$(mktemp -d)
trap 'rm -rf "$w" "$tmpko"' EXIT
ko_path() { # name -> path of its .ko or .ko.xz under KMODS, or nothing (built in)
  find "$KMODS" \( -name "$1.ko" -o -name "$1.ko.xz" \) | head -n1
}
ko_plain() { # path -> uncompressed copy in $tmpko
  local p=$1 n
  n=$(basename "${p%.xz}")
  if [ ! -f "$tmpko/$n" ]; then
    case "$p" in *.xz) xz -dc "$p" > "$tmpko/$n" ;; *) cp "$p" "$tmpko/$n" ;; esac
  fi
  echo "$tmpko/$n"
}
ko_depends() { # plain .ko -> its dependencies, comma separated
  objcopy -O binary --only-section=.modinfo "$1" /dev/stdout 2>/dev/null |
    tr '\0' '\n' | sed -n 's/^depends=//p'
}
order=()
add_module() { # name: dependencies first, each module once
  local name=$1 p plain dep
  for m in "${order[@]}"; do [ "$m" = "$name" ] && return 0; done
  p=$(ko_path "$name")
  if [ -z "$p" ]; then
    grep -q "/$name.ko\$" "$KMODS/../modules.builtin" && return 0
    die "module $name is neither a module nor built in on $KREL"
  fi
  plain=$(ko_plain "$p")
  for dep in $(ko_depends "$plain" | tr ',' ' '); do add_module "$dep"; done
  cp "$plain" "$w/lib/modules/$name.ko"
  order+=("$name")
}
# crc32c_generic before the filesystems: ext4 and xfs ask the crypto API for crc32c, and
# the guest has no modprobe for the kernel to call.
for m in virtio_pci virtio_blk dm-mod dm-flakey dm-log-writes crc32c_generic ext4 xfs; do
  add_module "$m"
done
# ublk_drv for `remap attach` (remap-ublk/scripts/guest/ublk.sh), where the kernel has it
# (Debian's 6.12; 6.1 does not build it, and the guest test checks the refusal there).
if [ -n "$(ko_path ublk_drv)" ]; then add_module ublk_drv; fi
cp "$REMAP_KO" "$w/lib/modules/dm_remap.ko"
cp "$DUST_KO" "$w/lib/modules/dm-dust.ko"
printf '%s\n' "${order[@]}" dm-dust > "$w/lib/modules/load-order"

cp "$here/guest/init" "$w/init"
cp "$here/guest/test.sh" "$w/test.sh"
cp "$here/guest/fs.sh" "$w/fs.sh"
cp "$here/../../remap-ublk/scripts/guest/ublk.sh" "$w/ublk.sh"
chmod +x "$w/init" "$w/test.sh" "$w/fs.sh" "$w/ublk.sh"
for f in "$@"; do cp "$f" "$w/data/"; done

(cd "$w" && find . | cpio -o -H newc --quiet | gzip -1) > "$out"
echo "mkinitramfs: $out ($(du -h "$out" | cut -f1), modules: ${order[*]} dm-dust dm_remap)" >&2
