#!/usr/bin/env bash
# The systemd root of the boot-path guest (guest-test.sh, boots 8 and 9): a minimal Debian
# 12 made by debootstrap, with systemd, udev, dmsetup, kmod, e2fsprogs and nbd-client, packed
# as a tarball and cached. The remap files are not in it: guest-test.sh installs them into
# the disk image it makes from the tarball (bootroot.sh), at the paths a package puts them,
# so this root is made once and stays valid across builds of remap.
#
#   mkroot.sh            prints the path of the tarball, building it when absent
#
# Cache: ${REMAP_KCACHE:-.work/kernels}/root-bookworm-<hash of the package list>.tar.gz;
# a change of the list builds a new one. Needs root (debootstrap chroots and makes device
# nodes) and a Debian mirror (REMAP_DEBIAN_MIRROR, default http://deb.debian.org/debian).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${REMAP_KCACHE:-$repo/.work/kernels}
mirror=${REMAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=systemd,systemd-sysv,udev,dmsetup,kmod,e2fsprogs,nbd-client

log() { echo "mkroot: $*" >&2; }
die() { echo "mkroot: error: $*" >&2; exit 1; }

command -v debootstrap >/dev/null || die "debootstrap is not installed (scripts/install-deps.sh)"
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"

key=$(echo "bookworm minbase $packages" | sha256sum | cut -c1-12)
tarball=$cache/root-bookworm-$key.tar.gz
if [ -f "$tarball" ]; then
  echo "$tarball"
  exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/root-build.XXXXXX")
trap 'umount -R "$work/root/proc" "$work/root/sys" 2>/dev/null || true; rm -rf "$work"' EXIT
t0=$SECONDS
log "debootstrap bookworm ($packages) from $mirror"
debootstrap --variant=minbase --include="$packages" bookworm "$work/root" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  die "debootstrap failed"
}
r=$work/root
# A root that boots to multi-user without a login: no getty on the serial console (the
# test unit writes there), no password prompts, apt caches dropped.
echo remap-guest >"$r/etc/hostname"
rm -f "$r/etc/machine-id" "$r/var/lib/dbus/machine-id"
: >"$r/etc/machine-id"
ln -sf /dev/null "$r/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$r/etc/systemd/system/getty@tty1.service"
ln -sf /lib/systemd/system/multi-user.target "$r/etc/systemd/system/default.target"
rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*
(cd "$r" && tar -czf "$work/root.tar.gz" --numeric-owner .)
mv "$work/root.tar.gz" "$tarball"
log "built $tarball in $((SECONDS - t0))s ($(du -h "$tarball" | cut -f1))"
echo "$tarball"
