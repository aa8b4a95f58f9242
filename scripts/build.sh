#!/usr/bin/env bash
# Build castra, the static guest agent, and the default guest image.
# Usage: scripts/build.sh [--release]   (prints the castra binary's path last)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

profile=debug
flags=()
if [ "${1:-}" = "--release" ]; then profile=release; flags=(--release); fi

cargo build --quiet "${flags[@]}"
# The guest agent runs inside the guest, which has no C library: build it static.
rustup target add x86_64-unknown-linux-gnu >/dev/null 2>&1 || true
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --quiet \
  --target x86_64-unknown-linux-gnu --bin castra-agent
# A no-op when the image's inputs are unchanged.
"target/$profile/castra" image build >&2
echo "$PWD/target/$profile/castra"
