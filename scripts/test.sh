#!/usr/bin/env bash
# The whole test suite: installs what it needs, then format, lints, builds and every test
# tier. This is what CI runs (.ci/run) and what a developer runs before pushing.
#
#   ./scripts/test.sh            everything
#   REMAP_SKIP_KERNEL=1 ...      everything but the guest-kernel tests (for quick local runs;
#                                CI never sets it)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%ss)\n' "$*" "$SECONDS"; }

step "dependencies"
scripts/install-deps.sh

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "no_std builds of the engine and the format (what the kernel links)"
cargo build -p remap-core --no-default-features
cargo build -p remap-meta --no-default-features

step "tests (unit, integration, model, real NBD clients)"
cargo test --workspace --all-features --release

step "examples"
cargo run --release -p remap-core --features test-support --example salvage >/dev/null
cargo run --release -p remap-service --example embed

step "packages: the remap .deb (binary, man pages, completions, udev rule, systemd generator and units), installed into a clean root; the udev rule under udevadm test (remap-dkms: in the kernel step)"
deb=$(packaging/build-deb.sh | tail -n1)
packaging/test-deb.sh "$deb"
packaging/test-udev-rule.sh "${CARGO_TARGET_DIR:-target}/release/remap"

step "fuzz smoke runs"
fuzz/smoke.sh

if [ "${REMAP_SKIP_KERNEL:-}" != 1 ]; then
  step "kernel target: host tests, kernel clippy, guest tests on Debian 6.1 and 6.12"
  remap-kmod/scripts/test.sh
fi

step "done"
