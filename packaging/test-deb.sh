#!/usr/bin/env bash
# Install the `remap` .deb into a clean Debian root (packaging/clean-root.sh) with `dpkg -i`
# and check, inside it: `remap --help`, `man remap` (naming every subcommand) and
# `man remap-probe`, bash completion loaded the way bash-completion loads it, `remap probe`
# on a formatted spare, the systemd generator and units and the example configurations, the
# installed udev rule under `udevadm test` on a loop device, and that `dpkg -r` removes
# every file. Then lintian on the package: errors fail.
#
#   packaging/test-deb.sh path/to/remap_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(realpath "${1:?usage: packaging/test-deb.sh DEB}")
for t in dpkg-deb lintian losetup unshare chroot; do
  command -v "$t" >/dev/null || { echo "test-deb: $t missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
done

mkdir -p .work
work=$(realpath "$(mktemp -d .work/deb-test.XXXXXX)")
loop=
cleanup() {
  [ -z "$loop" ] || losetup -d "$loop" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
root=$work/root
packaging/clean-root.sh "$root"

passed=0
fail() { echo "test-deb: FAILED: $*" >&2; exit 1; }
ok() { passed=$((passed + 1)); echo "test-deb: ok: $*"; }
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

cp "$deb" "$root/tmp/"
in_root dpkg -i "/tmp/$(basename "$deb")" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i"; }
ok "dpkg -i $(basename "$deb") into a clean $(. "$root/etc/os-release"; echo "$PRETTY_NAME") root"

help=$(in_root remap --help)
grep -q "Keep a failing disk in service" <<<"$help" || fail "remap --help: $help"
ok "remap --help"

man=$(in_root env MANPAGER=cat MANWIDTH=100 man remap 2>&1) || fail "man remap: $man"
subs=$(in_root remap --help | sed -n '/^Commands:/,/^$/p' | awk 'NR > 1 && $1 != "help" && NF { print $1 }')
[ "$(wc -l <<<"$subs")" -ge 11 ] || fail "too few subcommands in --help: $subs"
for s in $subs; do
  grep -q "remap-$s(1)" <<<"$man" || fail "man remap does not name remap-$s(1)"
done
probe_man=$(in_root env MANPAGER=cat MANWIDTH=100 man remap-probe 2>&1) || fail "man remap-probe: $probe_man"
grep -q "ID_FS_TYPE=remap_spare" <<<"$probe_man" || fail "man remap-probe: $probe_man"
ok "man remap names all $(wc -l <<<"$subs") subcommands; man remap-probe renders"

# bash-completion loads completions/remap on the first TAB after `remap`.
completion=$(in_root bash --norc -c '
  source /usr/share/bash-completion/bash_completion
  __load_completion remap || exit 1
  complete -p remap
  fn=$(complete -p remap | sed -n "s/.*-F \([^ ]*\).*/\1/p")
  COMP_WORDS=(remap pro); COMP_CWORD=1; COMP_LINE="remap pro"; COMP_POINT=${#COMP_LINE}
  "$fn" remap pro remap
  printf "reply:%s\n" "${COMPREPLY[@]}"
  COMP_WORDS=(remap probe --j); COMP_CWORD=2; COMP_LINE="remap probe --j"; COMP_POINT=${#COMP_LINE}
  "$fn" remap --j probe
  printf "reply:%s\n" "${COMPREPLY[@]}"') || fail "bash completion: $completion"
[ "$(grep '^reply:' <<<"$completion")" = $'reply:probe\nreply:--json' ] || fail "bash completion: $completion"
ok "bash completion: 'remap pro<TAB>' -> probe, 'remap probe --j<TAB>' -> --json"

in_root sh -c 'cd /tmp && truncate -s 64M main.img && truncate -s 16M spare.img && remap create main.img spare.img >/dev/null'
props=$(in_root remap probe /tmp/spare.img)
grep -qx "ID_FS_TYPE=remap_spare" <<<"$props" || fail "remap probe in the root: $props"
ok "remap create and remap probe in the root"

# The boot pieces: the systemd generator (run as systemd runs it, with three directories,
# on a remaptab made of the installed example with one line taken in), the serve unit, the
# example configurations.
for f in /usr/lib/systemd/system-generators/remap-generator /usr/lib/systemd/system/remap-serve@.service \
  /usr/lib/systemd/system/remap-attach@.service /usr/share/doc/remap/remaptab.example /usr/share/doc/remap/serve.conf.example; do
  [ -f "$root$f" ] || fail "$f is not installed"
done
[ -x "$root/usr/lib/systemd/system-generators/remap-generator" ] || fail "the generator is not executable"
grep -q '^ExecStart=/usr/bin/remap serve ' "$root/usr/lib/systemd/system/remap-serve@.service" ||
  fail "remap-serve@.service does not run /usr/bin/remap serve"
grep -q '^ExecStart=/usr/bin/remap attach ' "$root/usr/lib/systemd/system/remap-attach@.service" ||
  fail "remap-attach@.service does not run /usr/bin/remap attach"
sed "s/^#scratch/scratch/" "$root/usr/share/doc/remap/remaptab.example" >"$root/etc/remaptab"
mkdir -p "$root/tmp/gen" "$root/tmp/gen-early" "$root/tmp/gen-late"
# With /proc, as systemd runs generators (the units name the binary by /proc/self/exe).
unshare -m sh -c 'mount -t proc proc "$1/proc" && chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin \
  /usr/lib/systemd/system-generators/remap-generator /tmp/gen /tmp/gen-early /tmp/gen-late' sh "$root" >/dev/null ||
  fail "the installed generator failed on the example remaptab"
unit=$root/tmp/gen/remap-activate@scratch.service
[ -f "$unit" ] || fail "the generator wrote no remap-activate@scratch.service: $(ls "$root/tmp/gen")"
grep -q '^ExecStart=/usr/bin/remap activate scratch /dev/sdb /dev/sdc1' "$unit" || fail "generated unit: $(cat "$unit")"
# Every man page the units name in Documentation= is installed.
for page in $(sed -n 's/^Documentation=//p' "$unit" "$root/usr/lib/systemd/system/remap-serve@.service" \
  "$root/usr/lib/systemd/system/remap-attach@.service" | tr ' ' '\n' |
  sed -n 's/^man:\([^(]*\)(\([0-9]\))$/\2:\1/p' | sort -u); do
  in_root man -w "${page%%:*}" "${page#*:}" >/dev/null 2>&1 || fail "Documentation=man:${page#*:}(${page%%:*}) is not installed"
done
rm -f "$root/etc/remaptab"
ok "systemd generator, remap-serve@.service, remap-attach@.service and the examples installed; the generator writes remap-activate@scratch.service from the example; the man pages the units name are installed"

# The installed rule and binary, through the root's udev, on a loop device.
loop=$(losetup -f --show "$root/tmp/spare.img")
uuid=$(sed -n 's/^ID_FS_UUID=//p' <<<"$props")
udev=$(unshare -m sh -c '
  mount --rbind /sys "$1/sys" && mount --rbind /dev "$1/dev" && mount -t proc proc "$1/proc" &&
  chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin udevadm test --action=add "/sys/class/block/$2" 2>/dev/null
' sh "$root" "$(basename "$loop")") || fail "udevadm test in the root"
grep -qx "ID_FS_TYPE=remap_spare" <<<"$udev" || fail "udevadm test: no ID_FS_TYPE: $udev"
grep -qx "ID_FS_UUID=$uuid" <<<"$udev" || fail "udevadm test: no ID_FS_UUID=$uuid: $udev"
grep -q "^DEVLINKS=.*/dev/disk/by-uuid/$uuid" <<<"$udev" || fail "udevadm test: no by-uuid link: $udev"
ok "udevadm test (the root's udev $(in_root udevadm --version)) on $loop: ID_FS_TYPE=remap_spare ID_FS_UUID=$uuid, /dev/disk/by-uuid link"

in_root dpkg -r remap >/dev/null 2>&1 || fail "dpkg -r remap"
left=$(dpkg-deb -c "$deb" | awk '$1 !~ /^d/ { sub(/^\./, "", $6); print $6 }' | while read -r f; do [ ! -e "$root$f" ] || echo "$f"; done)
[ -z "$left" ] || fail "dpkg -r left: $left"
ok "dpkg -r removes every file"

echo "test-deb: lintian $(lintian --version | awk '{print $2}'):"
lint=$(lintian --display-info "$deb" 2>&1 | grep -v "running with root privileges" || true)
echo "${lint:-(no tags)}"
if grep -q '^E: ' <<<"$lint"; then fail "lintian reports errors"; fi
ok "lintian: no errors"
echo "test-deb: $passed passed, 0 failed"
