#!/usr/bin/env bash
# Every check castra has: host setup, formatting, lints, unit, CLI and
# end-to-end tests (real QEMU guests under TCG). `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The e2e tests boot guests from the default image; build it once up front so
# its progress is visible here (a no-op when cached).
cargo run --quiet -- image build
INSTA_UPDATE=no cargo test --all-targets -- --test-threads=2
