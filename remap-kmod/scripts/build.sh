#!/usr/bin/env bash
# Build dm_remap.ko against one of the Debian kernels fetched by kernels.sh.
#
#   build.sh <6.1|6.12>      prints the path of an env file: KREL, REMAP_KO, DUST_KO
#
# With REMAP_KMOD_PREBUILT=DIR, the module is built from that DKMS source tree (its Rust
# part prebuilt, see packaging/build-dkms.sh) instead of from remap-kmod with cargo, with
# no rustc or cargo on PATH.
#
# Kbuild builds external modules in their source directory, and the two kernels need
# different objects, so the C glue and Kbuild are copied to a per-kernel directory under
# .work/kmod-build/<release>/; cargo gets its own target directory there as well. The
# kernel's own dm-dust (which Debian does not ship, see kernels.sh) is built there too, for
# the guest test.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
crate=$(cd "$here/.." && pwd)
repo=$(cd "$crate/.." && pwd)
flav=${1:?usage: build.sh <6.1|6.12>}

envf=$("$here/kernels.sh" "$flav" | tail -n1)
# shellcheck disable=SC1090
. "$envf"

work=${REMAP_KBUILD:-$repo/.work/kmod-build}/$KREL
mkdir -p "$work/mod" "$work/cargo"

if [ -n "${REMAP_KMOD_PREBUILT:-}" ]; then
  # A DKMS source tree (packaging/build-dkms.sh): the C glue is compiled here, the Rust part
  # is the prebuilt object in the tree; neither cargo nor rustc runs.
  src=$work/prebuilt
  rm -rf "$src"
  mkdir -p "$src"
  cp -r "$REMAP_KMOD_PREBUILT"/. "$src"/
  # As DKMS builds it (its dkms.conf MAKE[0]), with no Rust toolchain on PATH: the module
  # the guest test loads is then one built without Rust.
  norust=/usr/sbin:/usr/bin:/sbin:/bin
  if env PATH=$norust sh -c 'command -v rustc || command -v cargo' >/dev/null; then
    echo "build: rustc or cargo is in $norust: this would not be a build without Rust" >&2
    exit 1
  fi
  echo "build: dm_remap.ko for $KREL from the prebuilt tree $REMAP_KMOD_PREBUILT, no rustc/cargo on PATH" >&2
  env -i PATH=$norust HOME="$work" make -s -C "$KHDR" M="$src" CONFIG_DEBUG_INFO_BTF_MODULES= modules >&2
  ko=$src/dm_remap.ko
else
  for f in Kbuild dm-remap.c dm-remap-rust.h; do
    cmp -s "$crate/kernel/$f" "$work/mod/$f" || cp "$crate/kernel/$f" "$work/mod/$f"
  done
  echo "build: dm_remap.ko for $KREL" >&2
  make -s -C "$KHDR" M="$work/mod" \
    REMAP_KMOD="$crate" REMAP_CARGO_TARGET="$work/cargo" \
    CONFIG_DEBUG_INFO_BTF_MODULES= modules >&2
  ko=$work/mod/dm_remap.ko
fi
[ -f "$ko" ] || { echo "build: $ko was not produced" >&2; exit 1; }

mkdir -p "$work/dust"
cmp -s "$KDUST" "$work/dust/dm-dust.c" || cp "$KDUST" "$work/dust/dm-dust.c"
echo 'obj-m := dm-dust.o' > "$work/dust/Kbuild"
make -s -C "$KHDR" M="$work/dust" CONFIG_DEBUG_INFO_BTF_MODULES= modules >&2
dust=$work/dust/dm-dust.ko
[ -f "$dust" ] || { echo "build: $dust was not produced" >&2; exit 1; }

cat > "$work/build.env" <<ENV
KREL=$KREL
REMAP_KO=$ko
DUST_KO=$dust
ENV
echo "$work/build.env"
