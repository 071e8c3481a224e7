#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian 12 machine, only where missing.
# System packages come from Debian; cargo tools from crates.io. Idempotent.
set -euo pipefail

need_apt=()
# command -> package. qemu-system-x86 comes first: installing it can replace a newer
# qemu-utils with the version that matches it, so the qemu-utils check runs after it.
check() { command -v "$1" >/dev/null 2>&1 || need_apt+=("$2"); }

apt_install() {
  [ $# -gt 0 ] || return 0
  echo "install-deps: apt-get install $*" >&2
  export DEBIAN_FRONTEND=noninteractive
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

check qemu-system-x86_64 qemu-system-x86
check busybox busybox-static
check dmsetup dmsetup
check cpio cpio
check xz xz-utils
check pahole dwarves
apt_install "${need_apt[@]}"

need_apt=()
check qemu-img qemu-utils
check qemu-io qemu-utils
check nbdinfo libnbd-bin
check nbdcopy libnbd-bin
check nbdsh python3-libnbd
check nbdkit nbdkit
check fio fio
check promtool prometheus
# `remap create` probes SPARE with libblkid through wipefs; its tests make filesystems.
check wipefs util-linux
check mkswap util-linux
check mkfs.ext4 e2fsprogs
# The shared-storage and read-only tests attach real loop devices (root, loop driver).
check losetup mount
check partx util-linux
# Packaging: the probe's tests (a filesystem on a file, blkid), the udev rule under
# `udevadm test`, the clean root the .deb installs into, man pages, bash completion, lintian.
check blkid util-linux
check udevadm udev
check debootstrap debootstrap
check lintian lintian
check man man-db
[ -f /usr/share/bash-completion/bash_completion ] || need_apt+=(bash-completion)
# The filesystem-on-top guest test (remap-kmod/scripts/guest/fs.sh) and the generator's
# tests (systemd-escape, systemd-analyze verify).
check mke2fs e2fsprogs
check e2fsck e2fsprogs
check mkfs.xfs xfsprogs
check xfs_repair xfsprogs
check nbd-client nbd-client
# The boot-path guest's systemd root (remap-kmod/scripts/mkroot.sh).
check debootstrap debootstrap
check systemd-escape systemd
check systemd-analyze systemd
# nbdsh needs the Python module too (nbdsh is a script in libnbd-bin on some releases).
if ! PATH=/usr/bin:$PATH /usr/bin/python3 -c 'import nbd' >/dev/null 2>&1; then need_apt+=(python3-libnbd); fi
# shellcheck disable=SC2207
need_apt=($(printf '%s\n' "${need_apt[@]}" | sort -u))
apt_install "${need_apt[@]}"

# Fail loudly if anything is still missing: tests must not skip silently.
missing=()
for c in qemu-system-x86_64 busybox dmsetup qemu-img qemu-io nbdinfo nbdcopy nbdsh nbdkit fio promtool cpio wipefs mkswap mkfs.ext4 losetup partx mke2fs e2fsck mkfs.xfs xfs_repair systemd-escape systemd-analyze \
  nbd-client blkid udevadm debootstrap lintian man; do
  command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: still missing after install: ${missing[*]}" >&2
  exit 1
fi

# cargo-fuzz drives the fuzz smoke runs.
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "install-deps: cargo install cargo-fuzz" >&2
  cargo install --locked cargo-fuzz >/dev/null
fi

# remap-ublk: libublk's -sys crate generates its ublk bindings with bindgen, which loads
# libclang and reads the kernel's uapi headers (linux-libc-dev).
if ! ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1; then apt_install libclang-dev; fi
[ -e /usr/include/linux/ioctl.h ] || apt_install linux-libc-dev
ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || { echo "install-deps: libclang is still missing" >&2; exit 1; }
# cargo-deb builds the .deb (packaging/build-deb.sh).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "install-deps: cargo install cargo-deb" >&2
  cargo install --locked cargo-deb >/dev/null
fi
