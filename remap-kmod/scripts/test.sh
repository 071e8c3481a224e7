#!/usr/bin/env bash
# Every test of the dm-remap-v4 kernel target; the top-level test script calls this.
#
#   remap-kmod/scripts/test.sh [6.1|6.12|all]     (default: all)
#
# 1. Installs what is missing (system packages only where a command is absent; the
#    toolchain's rust-src component, which the kernel build compiles core and alloc from).
# 2. Host tests of the target's logic (cargo test -p remap-kmod) and clippy of the kernel
#    configuration (the FFI module only exists there; the workspace clippy cannot see it).
# 3. The module built from source against Debian's 6.1 and 6.12 kernels (fetched and
#    cached under .work/kernels): compiled and checked (rust-object.sh, objtool).
# 4. The remap-dkms package (packaging/build-dkms.sh), its module built from the package's
#    tree against each kernel with no rustc or cargo on PATH, and the acceptance test under
#    qemu TCG on each kernel with that module (packaging/test-dkms.sh).
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
check nbd-client nbd-client
check debootstrap debootstrap
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

case "$which_kernels" in all) flavours="6.1 6.12" ;; *) flavours=$which_kernels ;; esac
step "the module built from source (cargo, per kernel): compile, rust-object.sh checks, objtool"
for flav in $flavours; do "$here/build.sh" "$flav" >/dev/null; done

# The guest suite runs once per kernel, on the module the remap-dkms package builds (the
# Rust part prebuilt once with the union of the kernels' mitigation flags, the C glue
# compiled per kernel with no rustc or cargo on PATH): that is the module users get, and the
# Rust code is the same as the source build's, which is compiled and checked above. To run
# the suite on the source-built module instead: remap-kmod/scripts/guest-test.sh.
step "the remap-dkms package, built once"
dkms_deb=$(packaging/build-dkms.sh | tail -n1)
step "remap-dkms built without Rust against each kernel, objtool-clean; guest tests (qemu TCG) on that module"
packaging/test-dkms.sh "$dkms_deb" "${REMAP_BIN:-}" "$which_kernels"

step "guest tests of remap attach over ublk (qemu TCG; the refusal on 6.1)"
"$repo/remap-ublk/scripts/guest-test.sh" "$which_kernels"
step "done"
