#!/usr/bin/env bash
# The whole test suite: installs what it needs, then format, lints, builds and every test
# tier. This is what CI runs (.ci/run) and what a developer runs before pushing.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%ss)\n' "$*" "$SECONDS"; }

step "dependencies"
scripts/install-deps.sh

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "no_std build of remap-core"
cargo build -p remap-core --no-default-features

step "tests"
cargo test --workspace --all-features --release

step "fuzz smoke runs"
fuzz/smoke.sh

step "examples"
cargo run --release -p remap-core --features testing --example salvage >/dev/null

step "done"
