#!/usr/bin/env bash
# Every test of the dm-remap-v4 kernel target; the top-level test script calls this.
#
#   remap-kmod/scripts/test.sh [6.1|6.12|all]     (default: all)
#
# 1. Installs what is missing (system packages only where a command is absent; the
#    toolchain's rust-src component, which the kernel build compiles core and alloc from).
# 2. Host tests of the target's logic (cargo test -p remap-kmod) and clippy of the kernel
#    configuration (the FFI module only exists there; the workspace clippy cannot see it).
# 3. The guest test: builds the module against Debian's 6.1 and 6.12 kernels (fetched and
#    cached under .work/kernels) and runs the acceptance test under qemu TCG on each.
# Fails loudly: nothing is skipped because a tool is missing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
which_kernels=${1:-all}

step() { printf '\n=== remap-kmod: %s (%ss)\n' "$*" "$SECONDS"; }

step "dependencies"
need=()
check() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
check qemu-system-x86_64 qemu-system-x86
check dmsetup dmsetup
check cpio cpio
check xz xz-utils
check objcopy binutils
check make make
check x86_64-linux-gnu-gcc-12 gcc-12
check apt-get apt
check mke2fs e2fsprogs
check e2fsck e2fsprogs
check mkfs.xfs xfsprogs
check xfs_repair xfsprogs
bb=$(command -v busybox || true)
if [ -z "$bb" ] || [[ "$(ldd "$bb" 2>&1 || true)" != *"not a dynamic executable"* ]]; then
  need+=(busybox-static)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# libelf for the 6.1 objtool binary.
[ -e /usr/lib/x86_64-linux-gnu/libelf.so.1 ] || {
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get install -y -qq --no-install-recommends libelf1 >/dev/null
}
sysroot=$(rustc --print sysroot)
if [ ! -d "$sysroot/lib/rustlib/src/rust/library/core" ]; then
  command -v rustup >/dev/null || { echo "rust-src is missing and there is no rustup to add it" >&2; exit 1; }
  rustup component add rust-src
fi

step "host tests"
cargo test -q -p remap-kmod

step "clippy, kernel configuration"
RUSTC_BOOTSTRAP=1 RUSTFLAGS="--cfg remap_kernel" \
  CARGO_TARGET_DIR="$repo/.work/kmod-clippy" \
  cargo clippy -q -p remap-kmod --lib --features kernel --target x86_64-unknown-none \
  -Zbuild-std=core,alloc -- -D warnings

step "guest tests (qemu TCG)"
"$here/guest-test.sh" "$which_kernels"
step "done"
