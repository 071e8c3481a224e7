#!/usr/bin/env bash
# Show that dist/udev/60-remap.rules makes udev record a formatted spare, with `udevadm test`
# on this host's udev (no daemon needed): a formatted spare, a spare whose head copies were
# overwritten (named by its tail copy), a plain device and an ext4 filesystem, each on a loop
# device, each run through the whole rule set as an "add" event.
#
# The rule calls /usr/bin/remap; in a private mount namespace an overlay puts the binary
# under test there and the rule in /etc/udev/rules.d, so nothing on the host changes.
#
#   packaging/test-udev-rule.sh [path/to/remap]     (default target/release/remap)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release/remap}")
rule=$(realpath dist/udev/60-remap.rules)
for t in udevadm losetup unshare mkfs.ext4; do
  command -v "$t" >/dev/null || { echo "test-udev-rule: $t missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
done

work=$(mktemp -d)
loops=()
cleanup() {
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

truncate -s 64M "$work/main.img"
truncate -s 16M "$work/spare.img" "$work/headless.img" "$work/plain.img" "$work/ext4.img"
"$bin" create "$work/main.img" "$work/spare.img" >/dev/null
"$bin" create "$work/main.img" "$work/headless.img" >/dev/null
headless_uuid=$("$bin" probe "$work/headless.img" --json | sed -n 's/.*"uuid": "\(.*\)".*/\1/p')
dd if=/dev/zero of="$work/headless.img" bs=8192 count=1 conv=notrunc status=none
uuid=$("$bin" probe "$work/spare.img" --json | sed -n 's/.*"uuid": "\(.*\)".*/\1/p')
[ -n "$uuid" ] || { echo "test-udev-rule: no uuid from remap probe" >&2; exit 1; }
mkfs.ext4 -F -q "$work/ext4.img"

attach() { local l; l=$(losetup -f --show "$1"); loops+=("$l"); echo "$l"; }
spare=$(attach "$work/spare.img")
headless=$(attach "$work/headless.img")
plain=$(attach "$work/plain.img")
ext4=$(attach "$work/ext4.img")

# The three `udevadm test` runs inside one private mount namespace.
unshare -m bash -euo pipefail -s "$bin" "$rule" "$work" "$spare" "$plain" "$ext4" "$headless" <<'INNER'
bin=$1 rule=$2 work=$3 spare=$4 plain=$5 ext4=$6 headless=$7
mkdir -p "$work/bin.up" "$work/bin.work" "$work/rules.up" "$work/rules.work"
cp "$bin" "$work/bin.up/remap"
cp "$rule" "$work/rules.up/"
mount -t overlay overlay -o "lowerdir=/usr/bin,upperdir=$work/bin.up,workdir=$work/bin.work" /usr/bin
mkdir -p /etc/udev/rules.d
mount -t overlay overlay -o "lowerdir=/etc/udev/rules.d,upperdir=$work/rules.up,workdir=$work/rules.work" /etc/udev/rules.d
for dev in "$spare" "$plain" "$ext4" "$headless"; do
  udevadm test --action=add "/sys/class/block/$(basename "$dev")" >"$work/$(basename "$dev").out" 2>"$work/$(basename "$dev").log"
done
INNER

props() { cat "$work/$(basename "$1").out"; }
fail() { echo "test-udev-rule: $*" >&2; exit 1; }
has() { props "$1" | grep -qx -- "$2" || { props "$1" >&2; fail "$1: no line '$2'"; }; }
hasnot() { if props "$1" | grep -q -- "$2"; then props "$1" >&2; fail "$1: unexpected '$2'"; fi; }

has "$spare" "ID_FS_TYPE=remap_spare"
has "$spare" "ID_FS_UUID=$uuid"
has "$spare" "ID_FS_VERSION=2"
has "$spare" "REMAP_VALID_COPIES=A,B,tail"
has "$spare" "REMAP_MAIN_SIZE=67108864"
has "$spare" "REMAP_STATE=valid"
props "$spare" | grep -q "^DEVLINKS=.*/dev/disk/by-uuid/$uuid" || { props "$spare" >&2; fail "no by-uuid link for the spare"; }
has "$headless" "ID_FS_TYPE=remap_spare"
has "$headless" "ID_FS_UUID=$headless_uuid"
has "$headless" "REMAP_VALID_COPIES=tail"
hasnot "$plain" "ID_FS_TYPE="
hasnot "$plain" "REMAP_"
has "$ext4" "ID_FS_TYPE=ext4"
hasnot "$ext4" "REMAP_"

echo "test-udev-rule: udevadm test (host udev $(udevadm --version)) sets the properties:"
props "$spare" | grep -E '^(ID_FS_|REMAP_|DEVLINKS)'
echo "test-udev-rule: 4 passed, 0 failed (spare named, spare without head copies named by its tail, plain device left empty, ext4 left to blkid)"
