#!/usr/bin/env bash
# Fetch the Debian kernels the kernel target is built and tested against, cached.
#
#   kernels.sh [6.1|6.12|all]     (default: all)
#
# For each flavour, resolves the current ABI from Debian's meta package (security updates
# replace versions, so nothing is pinned), downloads the unsigned image, the headers (arch
# and common) and the matching kbuild package with `apt-get download`, unpacks them with
# dpkg-deb into $REMAP_KCACHE/<release>/root and points the headers Makefile at the
# unpacked common tree. Debian builds its kernels without dm-dust (CONFIG_DM_DUST is not
# set), which the guest test needs to make blocks fail reads only; so the kernel source
# package of the very same version is fetched too and drivers/md/dm-dust.c kept (in
# <release>/dm-dust/), to be built out of tree by build.sh. A second run with the same
# release downloads nothing.
#
# Prints, one per line, the env file of each flavour (shell assignments: KFLAVOUR, KREL,
# KROOT, KHDR, KIMAGE, KMODS, KDUST), for the build and guest scripts to source.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${REMAP_KCACHE:-$repo/.work/kernels}
mkdir -p "$cache"

log() { echo "kernels: $*" >&2; }
die() { echo "kernels: error: $*" >&2; exit 1; }

# The meta package that names the current kernel of a flavour.
meta_of() {
  case "$1" in
    6.1) echo linux-headers-amd64 ;;
    6.12) echo linux-headers-6.12-amd64 ;;
    *) die "unknown kernel flavour '$1' (want 6.1 or 6.12)" ;;
  esac
}

# Kernel release (e.g. 6.12.117+deb12-amd64) the meta package depends on, or nothing.
resolve_krel() {
  apt-cache depends "$(meta_of "$1")" 2>/dev/null |
    sed -n 's/^ *Depends: linux-headers-\(.*-amd64\)$/\1/p' | head -n1
}

# Check that a release is what the flavour asks for (6.1 must not resolve to 6.12).
matches_flavour() {
  case "$2" in "$1".*) return 0 ;; *) return 1 ;; esac
}

# drivers/md/dm-dust.c from the kernel source package of exactly the image's version.
fetch_dust() {
  local flav=$1 krel=$2 dir=$3 version srcver
  [ -f "$dir/dm-dust/dm-dust.c" ] && return 0
  version=$(apt-cache show --no-all-versions "linux-image-$krel-unsigned" | sed -n 's/^Version: //p' | head -n1)
  srcver=$(apt-cache madison "linux-source-$flav" | awk -v v="$version" '$3 == v {print $3}' | head -n1)
  [ -n "$srcver" ] || die "$flav: no linux-source-$flav of version $version (needed for dm-dust)"
  log "$flav: downloading linux-source-$flav $srcver for dm-dust.c"
  rm -rf "$dir/src-deb" "$dir/dm-dust"
  mkdir -p "$dir/src-deb" "$dir/dm-dust"
  (cd "$dir/src-deb" && apt-get download -q "linux-source-$flav=$srcver" >&2) ||
    die "$flav: apt-get download linux-source-$flav=$srcver failed"
  dpkg-deb --fsys-tarfile "$dir"/src-deb/linux-source-"$flav"_*.deb |
    tar -xO --wildcards '*/linux-source-*.tar.xz' |
    tar -xJO --wildcards '*/drivers/md/dm-dust.c' > "$dir/dm-dust/dm-dust.c.tmp"
  grep -q 'struct target_type dust_target' "$dir/dm-dust/dm-dust.c.tmp" || die "$flav: could not extract dm-dust.c"
  mv "$dir/dm-dust/dm-dust.c.tmp" "$dir/dm-dust/dm-dust.c"
  rm -rf "$dir/src-deb"
}

fetch_one() {
  local flav=$1 krel envf
  envf=$cache/$flav.env
  krel=$(resolve_krel "$flav")
  if [ -z "$krel" ] || ! apt-cache show "linux-image-$krel-unsigned" >/dev/null 2>&1; then
    log "$flav: package lists do not name a kernel; running apt-get update"
    if [ "$(id -u)" -eq 0 ]; then apt-get update -qq >&2 || true; else sudo apt-get update -qq >&2 || true; fi
    krel=$(resolve_krel "$flav")
  fi
  if [ -z "$krel" ]; then
    # Offline, or the meta package is gone: a complete earlier download is still usable.
    if [ -f "$envf" ]; then
      log "$flav: cannot resolve from apt; using the cached $(. "$envf"; echo "$KREL")"
      echo "$envf"
      return 0
    fi
    die "$flav: cannot resolve the kernel release from $(meta_of "$flav"), and nothing is cached"
  fi
  matches_flavour "$flav" "$krel" || die "$flav: $(meta_of "$flav") resolves to $krel"
  local kabi=${krel%-amd64}
  local dir=$cache/$krel
  local root=$dir/root
  local khdr=$root/usr/src/linux-headers-$krel
  if [ ! -f "$dir/.complete" ]; then
    local kbuild
    kbuild=$(apt-cache depends "linux-headers-$krel" 2>/dev/null |
      sed -n 's/^ *Depends: \(linux-kbuild-[^ ]*\)$/\1/p' | head -n1)
    [ -n "$kbuild" ] || die "$flav: cannot find the kbuild package of linux-headers-$krel"
    rm -rf "$dir"
    mkdir -p "$dir/debs" "$root"
    log "$flav: downloading $krel (image, headers, common headers, $kbuild)"
    local tries=0
    until (cd "$dir/debs" && apt-get download -q \
      "linux-image-$krel-unsigned" "linux-headers-$krel" "linux-headers-$kabi-common" "$kbuild" >&2); do
      tries=$((tries + 1))
      [ $tries -lt 3 ] || die "$flav: apt-get download failed $tries times"
      log "$flav: download failed; retrying after apt-get update"
      apt-get update -qq >&2 || true
      sleep 2
    done
    local deb
    for deb in "$dir"/debs/*.deb; do
      log "$flav: unpacking $(basename "$deb")"
      dpkg-deb -x "$deb" "$root"
    done
    # The arch headers' Makefile includes the common tree by its installed absolute path.
    [ -f "$khdr/Makefile" ] || die "$flav: $khdr/Makefile missing after unpacking"
    sed -i "s#^include /usr/src/#include $root/usr/src/#" "$khdr/Makefile"
    grep -q "^include $root/usr/src/" "$khdr/Makefile" || die "$flav: could not repoint $khdr/Makefile"
    [ -f "$root/boot/vmlinuz-$krel" ] || die "$flav: no vmlinuz-$krel in the image package"
    [ -d "$root/lib/modules/$krel/kernel" ] || die "$flav: no modules for $krel"
    # The .debs are not needed once unpacked.
    rm -rf "$dir/debs"
    touch "$dir/.complete"
    # Older releases of this flavour are superseded.
    local old
    for old in "$cache"/"$flav".*; do
      [ -d "$old" ] && [ "$old" != "$dir" ] && { log "$flav: removing superseded $(basename "$old")"; rm -rf "$old"; }
    done
  else
    log "$flav: $krel cached"
  fi
  fetch_dust "$flav" "$krel" "$dir"
  cat > "$envf.tmp" <<ENV
KFLAVOUR=$flav
KREL=$krel
KROOT=$root
KHDR=$khdr
KIMAGE=$root/boot/vmlinuz-$krel
KMODS=$root/lib/modules/$krel/kernel
KDUST=$dir/dm-dust/dm-dust.c
ENV
  mv "$envf.tmp" "$envf"
  echo "$envf"
}

want=${1:-all}
case "$want" in
  all) flavours="6.1 6.12" ;;
  6.1 | 6.12) flavours=$want ;;
  *) die "usage: kernels.sh [6.1|6.12|all]" ;;
esac
for f in $flavours; do fetch_one "$f"; done
