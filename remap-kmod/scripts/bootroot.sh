#!/usr/bin/env bash
# The disks of the boot-path guest (guest-test.sh, boots 8 and 9; guest/boot.sh):
#
#   boot-root.img     the systemd root: mkroot.sh's Debian 12 with the kernel's modules (what
#                     the linux-image package would install), remap installed where a
#                     package puts it (install_remap below) and configured as an operator
#                     would: /etc/remaptab and /etc/fstab for the kernel target; an enabled
#                     remap-serve@served, /etc/nbdtab and /etc/fstab for the NBD path
#   boot-main.img     the pair of /etc/remaptab: a 512 MiB main holding an ext4 made here,
#   boot-spare.img    its spare formatted by `remap create`, named by its UUID
#   boot-smain.img    the pair served by remap-serve@served, the same way
#   boot-sspare.img
#   boot-rules.conf   qemu blkdebug rules: both main disks fail reads and writes of blocks
#                     BOOT_FAIL_FIRST..BOOT_FAIL_LAST (4 KiB), where the files go
#
#   REMAP_BIN=... bootroot.sh <kernel env> <build env> <root tarball> <work dir>
#
# The initramfs is mkinitramfs.sh's: its /init mounts remap.root= and switches to it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
kenv=$1
benv=$2
tarball=$3
wd=$4
# shellcheck disable=SC1090
. "$kenv"
# shellcheck disable=SC1090
. "$benv"
# The run of blocks the main disks fail: under the files guest/boot.sh writes on a fresh
# 512 MiB ext4, whose regular files start in block group 1 (flex_bg keeps group 0 for
# directories) on 6.1 and 6.12 alike: f7 lands on 32896-32958. If an allocator puts them
# elsewhere, the host's check finds no remaps and fails.
BOOT_FAIL_FIRST=32896
BOOT_FAIL_LAST=32959

PATH=$PATH:/usr/sbin:/sbin
die() { echo "bootroot: error: $*" >&2; exit 1; }
for tool in chroot mke2fs objcopy tar; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
[ -x "${REMAP_BIN:-}" ] || die "REMAP_BIN does not name a built remap binary"
[ -f "$tarball" ] || die "no root tarball at $tarball (mkroot.sh)"

# Install remap into ROOT at the paths a package puts it. The one place to swap for
# `dpkg --root` of the .deb.
install_remap() { # root
  local r=$1
  install -D -m 0755 /dev/null "$r/usr/bin/remap"
  objcopy --strip-debug "$REMAP_BIN" "$r/usr/bin/remap"
  install -D -m 0755 "$repo/dist/systemd/remap-generator" "$r/usr/lib/systemd/system-generators/remap-generator"
  install -D -m 0644 "$repo/dist/systemd/remap-serve@.service" "$r/usr/lib/systemd/system/remap-serve@.service"
  install -D -m 0644 "$repo/dist/remaptab.example" "$r/usr/share/doc/remap/remaptab.example"
  install -D -m 0644 "$repo/dist/serve.conf.example" "$r/usr/share/doc/remap/serve.conf.example"
  install -D -m 0644 "$REMAP_KO" "$r/lib/modules/$KREL/updates/dm_remap.ko"
  chroot "$r" /sbin/depmod -a "$KREL"
}

# A pair: ext4 with default options on the main, then `remap create`; prints the spare's
# UUID.
make_pair() { # main spare
  rm -f "$1" "$2"
  truncate -s 512M "$1"
  truncate -s 16M "$2"
  mke2fs -q -F -t ext4 "$1" >&2
  "$REMAP_BIN" create "$1" "$2" >/dev/null || die "remap create $1 $2 failed"
  "$REMAP_BIN" status "$1" "$2" --json | sed -n 's/^ *"uuid": *"\([0-9a-f-]*\)",*$/\1/p' | head -n1
}

uuid=$(make_pair "$wd/boot-main.img" "$wd/boot-spare.img")
[ -n "$uuid" ] || die "no UUID in remap status of $wd/boot-spare.img"
make_pair "$wd/boot-smain.img" "$wd/boot-sspare.img" >/dev/null
{
  b=$BOOT_FAIL_FIRST
  while [ "$b" -le "$BOOT_FAIL_LAST" ]; do
    printf '[inject-error]\nevent = "write_aio"\nerrno = "5"\nsector = "%d"\n\n' $((b * 8))
    b=$((b + 1))
  done
} >"$wd/boot-rules.conf"
echo "$BOOT_FAIL_FIRST $BOOT_FAIL_LAST" >"$wd/boot-fail-run"

r=$wd/boot-root
rm -rf "$r"
mkdir -p "$r"
tar -xzf "$tarball" -C "$r" --numeric-owner
# The kernel's modules, as its package installs them, then remap's.
mkdir -p "$r/lib/modules"
cp -a "$KMODS/.." "$r/lib/modules/$KREL"
install_remap "$r"

# The operator's configuration.
cat >"$r/etc/remaptab" <<EOF
# NAME  MAIN                               SPARE                                      OPTIONS
data    /dev/disk/by-id/virtio-remap-main  UUID=$uuid  -
EOF
cat >"$r/etc/fstab" <<EOF
/dev/disk/by-id/virtio-remap-root  /            ext4  defaults                                      0 0
/dev/mapper/data                   /mnt/data    ext4  defaults                                      0 2
/dev/nbd0                          /mnt/served  ext4  _netdev,x-systemd.requires=nbd@nbd0.service  0 0
EOF
mkdir -p "$r/mnt/data" "$r/mnt/served" "$r/etc/remap/serve"
cat >"$r/etc/remap/serve/served.conf" <<EOF
MAIN=/dev/disk/by-id/virtio-remap-smain
SPARE=/dev/disk/by-id/virtio-remap-sspare
SERVE_ARGS=--socket /run/remap/served/nbd.sock --name served
EOF
ln -s /usr/lib/systemd/system/remap-serve@.service \
  "$r/etc/systemd/system/multi-user.target.wants/remap-serve@served.service"
echo "nbd0 /run/remap/served/nbd.sock served unix" >"$r/etc/nbdtab"
echo nbd >"$r/etc/modules-load.d/nbd.conf"
# nbd-client connects once the server listens.
mkdir -p "$r/etc/systemd/system/nbd@nbd0.service.d"
cat >"$r/etc/systemd/system/nbd@nbd0.service.d/remap-serve.conf" <<EOF
[Unit]
Requires=remap-serve@served.service
After=remap-serve@served.service
EOF

# The test: guest/test.sh with guest/fs.sh and guest/boot.sh, run once boot is done; the
# console is the host's record. A boot that falls to emergency or rescue mode says so and
# powers off instead of waiting for a login.
cp "$here/guest/test.sh" "$r/test.sh"
cp "$here/guest/fs.sh" "$r/fs.sh"
cp "$here/guest/boot.sh" "$r/boot.sh"
mkdir -p "$r/data"
cp "$wd/pat4m" "$r/data/pat4m"
cat >"$r/boot-check" <<'EOF'
#!/bin/sh
phase=$(sed -n 's/.*remap\.phase=\([0-9]*\).*/\1/p' /proc/cmdline)
echo "GUEST: systemd boot done at $(cut -d' ' -f1 /proc/uptime)s, phase $phase"
sh /test.sh "$phase"
echo "GUEST: test.sh exited $? at $(cut -d' ' -f1 /proc/uptime)s"
# What the boot spent its time on (systemd-analyze needs D-Bus, which this root lacks).
systemctl show -p Id -p InactiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic -- \
  $(systemctl list-units --all --plain --no-legend --type=service,mount | awk '{print $1}') |
  awk 'BEGIN { RS = ""; FS = "\n" }
    { for (i = 1; i <= NF; i++) { eq = index($i, "="); p[substr($i, 1, eq - 1)] = substr($i, eq + 1) }
      s = p["InactiveExitTimestampMonotonic"]; e = p["ActiveEnterTimestampMonotonic"]
      if (s > 0 && e >= s) printf "%d %.1fs-%.1fs %s\n", e - s, s / 1e6, e / 1e6, p["Id"] }' |
  sort -rn | head -n 12 | cut -d' ' -f2- | sed 's/^/GUEST: unit /'
systemctl poweroff --no-block --check-inhibitors=no
EOF
chmod +x "$r/boot-check"
cat >"$r/etc/systemd/system/remap-boot-check.service" <<EOF
[Unit]
Description=remap boot-path test (guest/boot.sh)
After=local-fs.target remote-fs.target remap-serve@served.service nbd@nbd0.service

[Service]
Type=oneshot
ExecStart=/boot-check
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0

[Install]
WantedBy=multi-user.target
EOF
ln -s /etc/systemd/system/remap-boot-check.service \
  "$r/etc/systemd/system/multi-user.target.wants/remap-boot-check.service"
for unit in emergency rescue; do
  mkdir -p "$r/etc/systemd/system/$unit.service.d"
  cat >"$r/etc/systemd/system/$unit.service.d/remap-test.conf" <<EOF
[Service]
ExecStart=
ExecStart=/bin/sh -c 'echo "FAIL boot fell to $unit mode"; systemctl list-units --failed --plain --no-legend; journalctl -b -p warning --no-pager | tail -n 60; systemctl poweroff -ff'
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
EOF
done

rm -f "$wd/boot-root.img"
mke2fs -q -t ext4 -L remaproot -d "$r" "$wd/boot-root.img" 1G
rm -rf "$r"
echo "bootroot: $wd/boot-root.img (spare UUID $uuid; failing run $BOOT_FAIL_FIRST-$BOOT_FAIL_LAST)" >&2
