#!/bin/sh
# Bootstrap app: leaves a marker, then tells the host over the bus that it
# ran (castra-agent is on the agent's PATH, so on this script's too).
set -eu
echo "castra flake bootstrap ran at $(date -u +%FT%TZ)" > /run/castra-flake-marker
echo "marker written"
castra-agent publish --topic flake.done "{\"marker\":\"/run/castra-flake-marker\",\"greeting\":\"${GREETING:-none}\"}"
