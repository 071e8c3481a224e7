#!/usr/bin/env bash
# The remap-dkms package builds without Rust and its module works: the tree is taken out of
# the .deb as installed (/usr/src/dm-remap-VERSION), built against the Debian 6.1 and 6.12
# headers (remap-kmod/scripts/kernels.sh; REMAP_KCACHE) with a PATH that has no rustc or
# cargo, with no compiler or objtool warning, objtool having run with the kernel's
# mitigation checks; then the existing guest tests run on the module built this way.
#
#   packaging/test-dkms.sh path/to/remap-dkms_*.deb [path/to/remap|"" [6.1|6.12|all]]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
deb=$(realpath "${1:?usage: packaging/test-dkms.sh DEB [REMAP_BIN]}")
# Without a remap binary, guest-test.sh builds one.
bin=${2:+$(realpath "$2")}
case "${3:-all}" in
  all) flavours="6.1 6.12" ;;
  6.1 | 6.12) flavours=$3 ;;
  *) echo "test-dkms: kernels: 6.1, 6.12 or all" >&2; exit 2 ;;
esac
fail() { echo "test-dkms: FAILED: $*" >&2; exit 1; }
for t in dpkg-deb lintian make; do
  command -v "$t" >/dev/null || fail "$t missing (scripts/install-deps.sh installs it)"
done
passed=0
ok() { passed=$((passed + 1)); echo "test-dkms: ok: $*"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/root"
tree=$(echo "$work"/root/usr/src/dm-remap-*)
[ -f "$tree/dkms.conf" ] && [ -f "$tree/remap_kmod.o_shipped" ] || fail "no DKMS tree in $deb"
if find "$tree" -name '*.rs' -o -name Cargo.toml | grep -q .; then fail "Rust sources in the DKMS tree"; fi

# No Rust toolchain on this PATH.
norust=/usr/sbin:/usr/bin:/sbin:/bin
if env PATH=$norust sh -c 'command -v rustc || command -v cargo' >/dev/null; then
  fail "rustc or cargo is in $norust: this would not prove a build without Rust"
fi

for flav in $flavours; do
  kenv=$(remap-kmod/scripts/kernels.sh "$flav" 2>/dev/null | tail -n1)
  # shellcheck disable=SC1090
  . "$kenv"
  b=$work/build-$flav
  cp -r "$tree" "$b"
  # As DKMS runs it (dkms.conf MAKE[0]), with no Rust on PATH.
  env -i PATH=$norust HOME="$work" make -C "$KHDR" M="$b" CONFIG_DEBUG_INFO_BTF_MODULES= modules >"$b.log" 2>&1 ||
    { cat "$b.log" >&2; fail "$KREL: make"; }
  [ -f "$b/dm_remap.ko" ] || fail "$KREL: no dm_remap.ko"
  if grep -i -E 'warning|error|not set|not found' "$b.log"; then fail "$KREL: warnings in the build"; fi
  # Where objtool ran on the Rust code (the object itself, or the linked module on kernels
  # that delay objtool to the link), with which checks.
  objtool=$(cat "$b/.remap_rust.o.cmd" "$b/.dm_remap.o.cmd" | grep -o 'objtool/objtool [^;]*' || true)
  [ -n "$objtool" ] || fail "$KREL: objtool did not run on the Rust code"
  need="--retpoline --rethunk --sls --orc"
  grep -q CONFIG_X86_KERNEL_IBT=y "$KHDR/.config" && need="$need --ibt"
  for flag in $need; do
    grep -q -- "$flag" <<<"$objtool" || fail "$KREL: objtool ran without $flag: $objtool"
  done
  ok "$KREL: built without rustc/cargo on PATH, no warning; objtool $need clean"
done

# The package as a user installs it: `dpkg -i` into a clean Debian root (packaging/
# clean-root.sh; no Rust toolchain in it at all) with dkms and what Debian's kernel headers
# depend on (pahole), each kernel's headers where Debian puts them
# (/lib/modules/KREL/build), and `dkms build` for each kernel.
root=$work/dkms-root
packaging/clean-root.sh "$root"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp "$deb" "$root/tmp/"
pairs=()
for flav in $flavours; do
  kenv=$(remap-kmod/scripts/kernels.sh "$flav" 2>/dev/null | tail -n1)
  # shellcheck disable=SC1090
  . "$kenv"
  mkdir -p "$root$KROOT"
  pairs+=("$KREL=$KHDR=$KROOT")
done
version=$(basename "$tree")
version=${version#dm-remap-}
unshare -m bash -euo pipefail -s "$root" "$(basename "$deb")" "$version" "${pairs[@]}" >"$work/dkms.log" 2>&1 <<'INNER' ||
root=$1 deb=$2 version=$3
shift 3
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
for p in "$@"; do kroot=${p##*=}; mount --bind "$kroot" "$root$kroot"; done
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root DEBIAN_FRONTEND=noninteractive "$@"; }
in_root sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends dkms pahole libelf1 >/dev/null'
if in_root sh -c 'command -v rustc || command -v cargo'; then echo "rustc or cargo in the clean root" >&2; exit 1; fi
# postinst: dkms add, and autoinstall for the running kernel (whose headers are not here).
in_root dpkg -i "/tmp/$deb"
for p in "$@"; do
  krel=${p%%=*} rest=${p#*=}; khdr=${rest%%=*}
  in_root sh -c "mkdir -p /lib/modules/$krel && ln -sfn $khdr /lib/modules/$krel/build"
  in_root dkms build -m dm-remap -v "$version" -k "$krel" ||
    { cat "$root/var/lib/dkms/dm-remap/$version/build/make.log"; exit 1; }
  ko=$root/var/lib/dkms/dm-remap/$version/$krel/x86_64/module/dm_remap.ko
  [ -f "$ko" ] || { echo "dkms built no dm_remap.ko for $krel" >&2; exit 1; }
  vermagic=$(in_root modinfo -F vermagic "${ko#"$root"}")
  case $vermagic in "$krel "*) ;; *) echo "dm_remap.ko for $krel has vermagic '$vermagic'" >&2; exit 1 ;; esac
  echo "BUILT $krel (vermagic $vermagic)"
done
INNER
  { cat "$work/dkms.log" >&2; fail "dkms build in a clean root"; }
grep '^BUILT' "$work/dkms.log" | sed 's/^BUILT /test-dkms: dkms built dm_remap.ko for /' >&2
[ "$(grep -c '^BUILT' "$work/dkms.log")" -eq "${#pairs[@]}" ] || { cat "$work/dkms.log" >&2; fail "dkms did not build for every kernel"; }
ok "dpkg -i into a clean $(. "$root/etc/os-release"; echo "$PRETTY_NAME") root without Rust; dkms build for $flavours"

echo "test-dkms: the guest tests on the modules built from the package tree" >&2
# guest-test.sh builds host-side checkers (log_replay) with cargo, so it keeps the full
# PATH; the module itself is built by build.sh from the package's tree as DKMS builds it,
# with no rustc or cargo on PATH (REMAP_KMOD_PREBUILT).
REMAP_KMOD_PREBUILT="$tree" REMAP_BIN="$bin" remap-kmod/scripts/guest-test.sh "${3:-all}" ||
  fail "guest tests on the DKMS-built module"
ok "guest tests pass on $flavours with the module built from the package tree without Rust"
echo "test-dkms: lintian $(lintian --version | awk '{print $2}'):"
lint=$(lintian --display-info --show-overrides "$deb" 2>&1 | grep -v "running with root privileges" || true)
echo "${lint:-(no tags)}"
if grep -q '^E: ' <<<"$lint"; then fail "lintian reports errors"; fi
ok "lintian: no errors"
echo "test-dkms: $passed passed, 0 failed"
