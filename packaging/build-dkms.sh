#!/usr/bin/env bash
# Build the DKMS package of the dm-remap-v4 kernel target, `remap-dkms`, whose build on the
# target machine needs no Rust toolchain: the Rust logic (remap-kmod with remap-core and
# remap-meta, core and alloc) is compiled here once, with the union of the supported
# kernels' mitigation flags (packaging/dkms/rust-flags.sh), into remap_kmod.o_shipped;
# DKMS compiles only the C glue per kernel and links it (packaging/dkms/Kbuild), and each
# kernel's objtool checks the result. Prints the source tree and the .deb, one per line.
#
#   packaging/build-dkms.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "build-dkms: no workspace version in Cargo.toml" >&2; exit 1; }
name=dm-remap
out=target/packaging/dkms
tree=$out/$name-$version
# shellcheck source=packaging/dkms/rust-flags.sh
. packaging/dkms/rust-flags.sh

mkdir -p "$out"
echo "build-dkms: the Rust object, once" >&2
REMAP_RUSTFLAGS="$REMAP_DKMS_RUSTFLAGS" REMAP_CARGO_TARGET="$repo/$out/cargo" \
  sh remap-kmod/kernel/cargo-kernel.sh "$repo/remap-kmod" "$repo/$out/libremap_kmod.a"

rm -rf "$tree"
mkdir -p "$tree"
cp packaging/dkms/Kbuild "$tree/Kbuild"
cp remap-kmod/kernel/dm-remap.c remap-kmod/kernel/dm-remap-rust.h remap-kmod/kernel/rust-object.sh "$tree/"
# Only the crate's member of the archive (core, alloc and the crates LTO-merged into it), as
# rust-object.sh takes it out at every build: compiler_builtins is never linked.
member=$(ar t "$out/libremap_kmod.a" | grep -v compiler_builtins | grep 'rcgu\.o$' || true)
[ "$(echo "$member" | grep -c .)" -eq 1 ] || { echo "build-dkms: expected one crate member, found: $member" >&2; exit 1; }
ar p "$out/libremap_kmod.a" "$member" >"$tree/remap_kmod.o_shipped"
cat > "$tree/dkms.conf" <<CONF
PACKAGE_NAME="$name"
PACKAGE_VERSION="$version"
BUILT_MODULE_NAME[0]="dm_remap"
DEST_MODULE_LOCATION[0]="/updates/dkms"
AUTOINSTALL="yes"
# The Rust part is prebuilt for x86-64 (remap_kmod.o_shipped); only the C glue is compiled.
BUILD_EXCLUSIVE_ARCH="x86_64"
MAKE[0]="make -C \${kernel_source_dir} M=\${dkms_tree}/\${PACKAGE_NAME}/\${PACKAGE_VERSION}/build modules"
CLEAN="make -C \${kernel_source_dir} M=\${dkms_tree}/\${PACKAGE_NAME}/\${PACKAGE_VERSION}/build clean"
CONF

# The .deb: the tree under /usr/src, registered with DKMS on install (as dh-dkms does).
pkg=$out/deb
rm -rf "$pkg"
mkdir -p "$pkg/DEBIAN" "$pkg/usr/src" "$pkg/usr/share/doc/remap-dkms"
cp -r "$tree" "$pkg/usr/src/"
cp packaging/changelog "$pkg/usr/share/doc/remap-dkms/changelog.Debian"
sed -i '1s/^remap /remap-dkms /' "$pkg/usr/share/doc/remap-dkms/changelog.Debian"
gzip -9n "$pkg/usr/share/doc/remap-dkms/changelog.Debian"
cat > "$pkg/usr/share/doc/remap-dkms/copyright" <<'COPY'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: remap

Files: *
Copyright: 2026 remap developers
License: GPL-2.0-only OR MIT
COPY
# The one lintian error, overridden: lintian exempts objects named *.o from "unstripped",
# not Kbuild's *_shipped; the prebuilt object is linked into the module, so it must keep the
# symbol table a link needs (it has no debug information: -Cdebuginfo=0).
mkdir -p "$pkg/usr/share/lintian/overrides"
cat > "$pkg/usr/share/lintian/overrides/remap-dkms" <<'OVR'
# The prebuilt Rust part of the module, linked by DKMS: its symbol table is what the link needs.
remap-dkms: unstripped-binary-or-object [usr/src/dm-remap-*/remap_kmod.o_shipped]
OVR
size=$(du -sk "$pkg/usr" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CTL
Package: remap-dkms
Version: $version-1
Architecture: amd64
Section: kernel
Priority: optional
Maintainer: remap developers <remap@example.invalid>
Depends: dkms (>= 3.0)
Installed-Size: $size
Description: dm-remap-v4 device-mapper target (DKMS, no Rust toolchain needed)
 The dm-remap-v4 target keeps a failing disk in service by moving its bad
 blocks to a spare device, with the same engine as the remap command. Its
 Rust logic ships prebuilt for x86-64 with the kernels' mitigations
 (retpoline, return thunks, IBT); DKMS compiles the C glue for each kernel
 and the kernel's objtool checks the module.
CTL
cat > "$pkg/DEBIAN/postinst" <<POST
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
  dkms add -m $name -v $version >/dev/null 2>&1 || true
  dkms autoinstall || true
fi
POST
cat > "$pkg/DEBIAN/prerm" <<PRERM
#!/bin/sh
set -e
if [ "\$1" = remove ] || [ "\$1" = upgrade ] || [ "\$1" = deconfigure ]; then
  dkms remove -m $name -v $version --all >/dev/null 2>&1 || true
fi
PRERM
chmod 755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm"
find "$pkg" -type d -exec chmod 755 {} +
find "$pkg/usr" -type f -exec chmod 644 {} +
deb=target/debian/remap-dkms_${version}-1_amd64.deb
mkdir -p target/debian
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$tree"
echo "$deb"
