#!/bin/sh
# Build the remap-kmod staticlib for the kernel (called from Kbuild).
#   cargo-kernel.sh <crate dir> <output .a>
# Environment: REMAP_RUSTFLAGS (the kernel's codegen flags), REMAP_CARGO_TARGET.
# The profile is defined here, not in the workspace: panic=abort, fat LTO, one codegen unit.
# core and alloc are compiled from the toolchain's rust-src with the same flags
# (-Zbuild-std; RUSTC_BOOTSTRAP=1 as for the kernel's own Rust build).
set -eu
crate=$1
out=$2
: "${REMAP_CARGO_TARGET:?}"
triple=x86_64-unknown-none
sysroot=$(rustc --print sysroot)
if [ ! -d "$sysroot/lib/rustlib/src/rust/library/core" ]; then
  echo "cargo-kernel.sh: the toolchain has no rust-src component (rustup component add rust-src)" >&2
  exit 1
fi
# Explicit --target: RUSTFLAGS then apply to the kernel code only, not to build scripts
# and proc-macros, which run on the host.
RUSTC_BOOTSTRAP=1 RUSTFLAGS="$REMAP_RUSTFLAGS" CARGO_TARGET_DIR="$REMAP_CARGO_TARGET" \
  cargo rustc --quiet --manifest-path "$crate/Cargo.toml" --lib \
  -Zbuild-std=core,alloc \
  --crate-type staticlib --target "$triple" --features kernel --profile kernel \
  --config 'profile.kernel.inherits="release"' \
  --config 'profile.kernel.panic="abort"' \
  --config 'profile.kernel.lto="fat"' \
  --config 'profile.kernel.codegen-units=1' \
  --config 'profile.kernel.opt-level=2' \
  --config 'profile.kernel.debug=false' \
  --config 'profile.kernel.overflow-checks=false' \
  --config 'profile.kernel.incremental=false'
built=$REMAP_CARGO_TARGET/$triple/kernel/libremap_kmod.a
[ -f "$built" ] || { echo "cargo-kernel.sh: $built was not built" >&2; exit 1; }
if ! cmp -s "$built" "$out"; then
  cp "$built" "$out.tmp"
  mv "$out.tmp" "$out"
fi
