#!/bin/sh
# castra guest init: PID 1 of castra's default guest image (busybox ash).
#
# Mounts the kernel filesystems, loads the virtio/fw_cfg/power-button modules
# listed in /lib/modules/castra.order (dependencies first, computed at build
# time), brings up lo and eth0 on QEMU's user-mode network, sets the hostname
# from castra.vm=<name> on the kernel command line, arms the power-button
# watcher (QMP system_powerdown -> clean poweroff), prints one "ready" line,
# then hands over to /bin/castra-agent if the image has one, or else does a
# handshake-only hello with the castra broker. PID 1 never exits.

/bin/busybox --install -s /bin
export PATH=/bin
umask 022

mount -t proc proc /proc
# Boot timeline marks for the agent (guest uptime, seconds): see docs/BOOT.md.
read -r CASTRA_BOOT_INIT _ </proc/uptime
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
exec </dev/console >/dev/console 2>&1

say() { echo "castra-init: $*"; }

# --- kernel command line: castra.vm=<name> castra.broker_port=<port> --------
CASTRA_VM=castra-guest
CASTRA_BROKER_PORT=
for word in $(cat /proc/cmdline); do
    case "$word" in
        castra.vm=*) CASTRA_VM="${word#castra.vm=}" ;;
        castra.broker_port=*) CASTRA_BROKER_PORT="${word#castra.broker_port=}" ;;
    esac
done
CASTRA_BROKER_HOST=10.0.2.2
CASTRA_TOKEN_FILE=/sys/firmware/qemu_fw_cfg/by_name/opt/castra/token/raw
export CASTRA_VM CASTRA_BROKER_PORT CASTRA_BROKER_HOST CASTRA_TOKEN_FILE
hostname "$CASTRA_VM"

# --- modules, in dependency order ---------------------------------------------
while read -r module; do
    [ -n "$module" ] || continue
    insmod "/lib/modules/$module" || say "insmod $module failed"
done </lib/modules/castra.order

# --- power button: QMP system_powerdown arrives as KEY_POWER -------------------
# busybox acpid does not see it here; reading one input event does. Plain
# `poweroff` would ask PID 1 (this shell) to do it, so use `poweroff -f`.
power_button_watch() {
    for _ in $(seq 1 50); do
        for dev in /sys/class/input/event*; do
            [ -r "$dev/device/name" ] || continue
            if [ "$(cat "$dev/device/name")" = "Power Button" ]; then
                dd if="/dev/input/${dev##*/}" bs=24 count=1 >/dev/null 2>&1
                say "power button, powering off"
                sync
                poweroff -f
            fi
        done
        sleep 0.1
    done
    say "no power button input device; QMP system_powerdown will not stop this guest"
}
power_button_watch &

# --- network: QEMU user-mode NAT (host 10.0.2.2, DNS 10.0.2.3) ----------------
ip link set lo up
for _ in $(seq 1 50); do
    [ -e /sys/class/net/eth0 ] && break
    sleep 0.1
done
if [ -e /sys/class/net/eth0 ]; then
    ip addr add 10.0.2.15/24 dev eth0
    ip link set eth0 up
    ip route add default via 10.0.2.2
    echo "nameserver 10.0.2.3" >/etc/resolv.conf
else
    say "no eth0 (no virtio-net device?); continuing without network"
fi

read -r CASTRA_BOOT_NET _ </proc/uptime
export CASTRA_BOOT_INIT CASTRA_BOOT_NET
echo "castra-guest: ready vm=$CASTRA_VM uptime=$CASTRA_BOOT_NET"

# --- the agent, or a handshake-only hello ----------------------------------
if [ -x /bin/castra-agent ]; then
    /bin/castra-agent </dev/null &
elif [ -n "$CASTRA_BROKER_PORT" ]; then
    (
        for _ in $(seq 1 60); do
            nc -w 5 "$CASTRA_BROKER_HOST" "$CASTRA_BROKER_PORT" -e /bin/castra-handshake
            case $? in
                0 | 2) exit 0 ;; # accepted, or refused (the reply is on the console)
            esac
            sleep 1
        done
        say "broker at $CASTRA_BROKER_HOST:$CASTRA_BROKER_PORT never answered; giving up"
    ) &
fi

# PID 1 must never exit; `wait` also reaps orphans reparented to us.
while :; do
    wait
    sleep 3600
done
