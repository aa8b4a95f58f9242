#!/usr/bin/env bash
# castra's main job on the built-in default: a 2-VM demo project.
# Sets up the host, builds castra, the guest agent and the default guest image,
# then init -> plan -> apply -> status -> apply (no-op) -> logs -> down, in a
# temp directory.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
CASTRA=$(./scripts/build.sh --release)

demo=$(mktemp -d /tmp/castra-demo.XXXXXX)
trap '"$CASTRA" -c "$demo/castra.toml" down >/dev/null 2>&1 || true' EXIT
cd "$demo"
run() { echo; echo "\$ castra $*"; "$CASTRA" "$@"; }
run init
run plan || true           # exit 2: changes pending
run apply
echo; echo "(waiting for both guests to report in through the broker)"
for _ in $(seq 1 60); do
  "$CASTRA" status --json | grep -c '"reachable": true' | grep -qx 2 && break
  sleep 0.5
done
run status
run apply                  # nothing changed: a no-op
run logs -n 3
run down
run status
echo; echo "demo project left in $demo (castra clean removes its state)"
