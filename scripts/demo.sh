#!/usr/bin/env bash
# castra's main job on the built-in default: a 2-VM demo project.
# Sets up the host, builds castra and the default guest image, then
# init -> apply -> status -> plan (no-op) -> down, in a temp directory.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The guest agent runs inside the guest, which has no C library: build it static.
rustup target add x86_64-unknown-linux-gnu >/dev/null 2>&1 || true
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --quiet \
  --target x86_64-unknown-linux-gnu --bin castra-agent

cargo build --release --quiet
CASTRA="$PWD/target/release/castra"

"$CASTRA" image build

demo=$(mktemp -d /tmp/castra-demo.XXXXXX)
trap '"$CASTRA" -c "$demo/castra.toml" down >/dev/null 2>&1 || true' EXIT
cd "$demo"
run() { echo; echo "\$ castra $*"; "$CASTRA" "$@"; }
run init
run plan || true           # exit 2: changes pending
run apply
run status
run apply                  # nothing changed: a no-op
run logs -n 3
run down
run status
echo; echo "demo project left in $demo (castra clean removes its state)"
