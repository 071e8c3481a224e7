#!/usr/bin/env bash
# A clean Debian root for installing the packages into: `debootstrap --variant=minbase` of
# the host's release, plus what the checks need (man-db for `man`, bash-completion, udev for
# `udevadm test`). Built once and kept as a tarball under .work/ (a second run takes
# seconds); every caller unpacks a fresh copy, so each install starts from the same state.
#
#   packaging/clean-root.sh DIR     unpack a fresh clean root into DIR (must not exist)
#
# The mirror is the one the host's apt uses (no host is named here).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:?usage: packaging/clean-root.sh DIR}
[ ! -e "$dest" ] || { echo "clean-root: $dest exists" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "clean-root: debootstrap missing (scripts/install-deps.sh installs it)" >&2; exit 1; }

. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
include=man-db,bash-completion,udev
cache=.work/clean-root-$suite.tar
if [ ! -f "$cache" ]; then
  mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 == "'"$suite"'" { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || { echo "clean-root: cannot find the host's Debian mirror in its apt sources" >&2; exit 1; }
  mkdir -p .work
  build=$(mktemp -d .work/clean-root.XXXXXX)
  echo "clean-root: debootstrap $suite (minbase + $include) once, into $cache" >&2
  debootstrap --variant=minbase --include="$include" "$suite" "$build/root" "$mirror" >"$build/log" 2>&1 \
    || { tail -20 "$build/log" >&2; echo "clean-root: debootstrap failed (log: $build/log)" >&2; exit 1; }
  # No downloaded .debs in the cache.
  rm -rf "$build/root/var/cache/apt/archives/"*.deb
  tar -C "$build/root" -cf "$cache.tmp" .
  mv "$cache.tmp" "$cache"
  rm -rf "$build"
fi
mkdir -p "$dest"
tar -C "$dest" -xf "$cache"
