#!/usr/bin/env bash
# Every check castra has: host setup, formatting, lints, unit, CLI and
# end-to-end tests (real QEMU guests under TCG). `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The guest agent runs inside the guest, which has no C library: build it static.
rustup target add x86_64-unknown-linux-gnu >/dev/null 2>&1 || true
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --quiet \
  --target x86_64-unknown-linux-gnu --bin castra-agent

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The e2e tests boot guests from the default image; build it once up front so
# its progress is visible here (a no-op when cached).
cargo run --quiet -- image build
INSTA_UPDATE=no cargo test --all-targets -- --test-threads=2
