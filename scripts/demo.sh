#!/usr/bin/env bash
# castra's main job on the built-in default: a 2-VM demo project.
# Sets up the host, builds castra, the guest agent and the default guest image,
# then init -> plan -> apply --wait -> status -> exec -> cp in and out ->
# apply (no-op) -> logs -> down, in a temp directory.
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
run apply --wait           # converged, and both guests reachable through the broker
run status
vms=$("$CASTRA" status --json | sed -n 's/.*"name": "\([^"]*\)".*/\1/p' | paste -sd, -)
run exec "$vms" -- uname -sr   # both guests at once, over the bus (no SSH)
first=${vms%%,*}
echo "hello from the host" > hello.txt
run cp hello.txt "$first:/tmp/hello.txt"
run exec "$first" -- sh -c 'tr a-z A-Z < /tmp/hello.txt > /tmp/shout.txt'
run cp "$first:/tmp/shout.txt" shout.txt
echo; echo "\$ cat shout.txt"; cat shout.txt
run apply                  # nothing changed: a no-op
run logs -n 3
run down
run status
echo; echo "demo project left in $demo (castra clean removes its state)"
