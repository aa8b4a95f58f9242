#!/bin/sh
# castra-handshake: a handshake-only client of the castra broker protocol v1
# (docs/BUS.md), run by `nc ... -e` with stdin/stdout on the TCP connection.
# Reads the `castra-broker ...` greeting, sends `hello vm:<name> [token=...]`,
# reads the one-line reply and reports it on stderr (the console). No bus
# capability is requested: the broker records reachability and closes.
# Exits 0 only on an `ok` reply.

read -r greeting || exit 1
case "$greeting" in
    castra-broker\ *) ;;
    *) echo "castra-guest: unexpected broker greeting: $greeting" >&2; exit 1 ;;
esac
token=
if [ -r "$CASTRA_TOKEN_FILE" ]; then
    token=$(cat "$CASTRA_TOKEN_FILE")
fi
if [ -n "$token" ]; then
    printf 'hello vm:%s token=%s\n' "$CASTRA_VM" "$token"
else
    printf 'hello vm:%s\n' "$CASTRA_VM"
fi
read -r reply || reply="(connection closed)"
reply=$(printf '%s' "$reply" | tr -d '\r')
echo "castra-guest: broker handshake: $reply" >&2
case "$reply" in
    ok | "ok "*) exit 0 ;;
    *) exit 2 ;;
esac
