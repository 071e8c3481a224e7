#!/usr/bin/env bash
# Build the `remap` .deb: the release binary, its man pages and shell completions generated
# from the clap definitions (xtask), the udev rule, with cargo-deb (metadata in
# remap-cli/Cargo.toml). Prints the path of the .deb on its last line.
#
#   packaging/build-deb.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo deb --version >/dev/null 2>&1 || { echo "build-deb: cargo-deb missing (scripts/install-deps.sh installs it)" >&2; exit 1; }

out=target/packaging
rm -rf "$out/man" "$out/completions"
cargo run --quiet --locked --release -p xtask -- man "$out/man" >/dev/null
cargo run --quiet --locked --release -p xtask -- completions "$out/completions" >/dev/null
# cargo-deb builds target/release/remap itself (release profile, stripped in the package).
deb=$(cargo deb --locked --strip -p remap-cli --output target/debian 2>&1 | tail -n1)
[ -f "$deb" ] || { echo "build-deb: cargo deb gave no package: $deb" >&2; exit 1; }
echo "$deb"
