#!/usr/bin/env bash
# Every check castra has: host setup, formatting, lints, unit, CLI, broker and
# end-to-end tests (real QEMU guests under TCG). `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# castra, the static guest agent and the default image the e2e tests boot.
./scripts/build.sh >/dev/null
# The Debian+Nix guest tests/e2e_nix.rs boots (debootstrap: a few minutes the
# first time, then a no-op until its inputs change; needs root).
./guest/debian-nix/build.sh >/dev/null
# Nix files: parse every one, evaluate what evaluates offline (docs/NIX.md).
CASTRA_BIN="$PWD/target/debug/castra" ./scripts/check-nix.sh
# Benchmarks are left out on purpose: they run on demand (cargo bench).
INSTA_UPDATE=no cargo test --lib --bins --tests -- --test-threads=2
