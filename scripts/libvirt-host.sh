#!/usr/bin/env bash
# libvirt "hosts" on this one machine, for castra's tests and by hand (docs/HOSTS.md).
#
#   scripts/libvirt-host.sh start-local DIR      libvirtd + virtlogd answering qemu:///system
#   scripts/libvirt-host.sh start NAME N DIR     a second host: network namespace cvh-NAME,
#                                                veth 10.77.N.1 (this side) <-> 10.77.N.2 (the
#                                                host), libvirtd --listen on 10.77.N.2:16509
#                                                (qemu+tcp://10.77.N.2/system), private
#                                                /run, /var/lib, /var/cache, /var/log and
#                                                /etc of libvirt under DIR, its own host_uuid
#   scripts/libvirt-host.sh stop-daemon DIR      stop only its libvirtd (guests keep running)
#   scripts/libvirt-host.sh start-daemon DIR     start that libvirtd again
#   scripts/libvirt-host.sh stop DIR             stop what start/start-local made in DIR (by
#                                                pid), its namespace and veth, then remove DIR
#
# Every daemon runs in a private mount namespace where /dev/kvm is /dev/null: on
# these machines KVM exists and hangs, and libvirt's capability probe would hang
# with it (guests run under TCG, domain type 'qemu'). QEMU runs as root there.
# Needs root, libvirt-daemon-system and iproute2 (scripts/setup-host.sh).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "libvirt-host: $*" >&2; exit 1; }

# The private config: QEMU as root (state under /root and 0600 files stay
# readable), no default network, TCP without auth when listening.
write_config() { # DIR LISTEN_ADDR|''
  local dir=$1 addr=$2
  mkdir -p "$dir"/{run,lib,cache,log,etc}
  cp -a /etc/libvirt/. "$dir/etc/"
  rm -f "$dir/etc/qemu/networks/autostart/"*.xml "$dir/etc/storage/autostart/"*.xml "$dir/etc/storage/"*.xml
  printf 'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nsecurity_driver = "none"\n' >>"$dir/etc/qemu.conf"
  if [ -n "$addr" ]; then
    {
      echo 'listen_tls = 0'
      echo 'listen_tcp = 1'
      echo "listen_addr = \"$addr\""
      echo 'auth_tcp = "none"'
      echo "host_uuid = \"$(cat /proc/sys/kernel/random/uuid)\""
    } >>"$dir/etc/libvirtd.conf"
  fi
}

# Start virtlogd and libvirtd inside a private mount namespace; the ones made
# for a second host also get private /run/libvirt and state directories.
daemons() { # DIR PRIVATE(0|1) WHAT(both|libvirtd) [ip netns exec NS]
  local dir=$1 private=$2 what=$3
  shift 3
  # The local daemon shares /run/libvirt (its socket answers qemu:///system); every
  # other libvirt directory is private to the daemon and goes with DIR.
  local binds="mount --bind /dev/null /dev/kvm 2>/dev/null || true; mount --bind $dir/etc /etc/libvirt;"
  [ "$private" = 1 ] && binds+=" mount --bind $dir/run /run/libvirt;"
  binds+=" mount --bind $dir/lib /var/lib/libvirt;"
  binds+=" mount --bind $dir/cache /var/cache/libvirt; mount --bind $dir/log /var/log/libvirt;"
  binds+=" mkdir -p /var/lib/libvirt/qemu /var/log/libvirt/qemu /var/cache/libvirt/qemu;"
  local listen=""
  [ "$private" = 1 ] && listen="--listen"
  local logd="virtlogd -d -p $dir/virtlogd.pid &&"
  [ "$what" = libvirtd ] && logd=""
  "$@" unshare -m --propagation private sh -c "$binds
    $logd libvirtd -d $listen -p $dir/libvirtd.pid"
}

wait_for() { # URI
  for _ in $(seq 1 600); do
    if timeout 5 virsh -q -c "$1" version >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "no answer from $1 after 60 s"
}

cmd=${1:-}
case "$cmd" in
start-local)
  dir=${2:?DIR}
  [ -S /run/libvirt/libvirt-sock ] && timeout 5 virsh -q -c qemu:///system version >/dev/null 2>&1 &&
    die "a libvirtd already answers qemu:///system: stop it first (this script only stops what it starts)"
  write_config "$dir" ""
  echo local >"$dir/kind"
  echo qemu:///system >"$dir/uri"
  daemons "$dir" 0 both
  wait_for qemu:///system
  echo "qemu:///system"
  ;;
start)
  name=${2:?NAME}
  n=${3:?N}
  dir=${4:?DIR}
  ns="cvh-$name"
  ip netns add "$ns"
  mkdir -p "$dir"
  echo "netns $ns" >"$dir/kind"
  ip link add "$ns-h" type veth peer name "$ns-g"
  ip link set "$ns-g" netns "$ns"
  ip addr add "10.77.$n.1/24" dev "$ns-h"
  ip link set "$ns-h" up
  ip -n "$ns" addr add "10.77.$n.2/24" dev "$ns-g"
  ip -n "$ns" link set "$ns-g" up
  ip -n "$ns" link set lo up
  ip -n "$ns" route add default via "10.77.$n.1"
  write_config "$dir" "10.77.$n.2"
  echo "qemu+tcp://10.77.$n.2/system" >"$dir/uri"
  daemons "$dir" 1 both ip netns exec "$ns"
  wait_for "qemu+tcp://10.77.$n.2/system"
  echo "qemu+tcp://10.77.$n.2/system"
  ;;
stop-daemon)
  # Only libvirtd (its guests keep running): the host stops answering.
  dir=${2:?DIR}
  pid=$(cat "$dir/libvirtd.pid")
  kill "$pid"
  for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.05; done
  kill -9 "$pid"
  ;;
start-daemon)
  dir=${2:?DIR}
  kind=$(cat "$dir/kind")
  case "$kind" in
  netns*) daemons "$dir" 1 libvirtd ip netns exec "${kind#netns }" ;;
  *) daemons "$dir" 0 libvirtd ;;
  esac
  wait_for "$(cat "$dir/uri")"
  ;;
stop)
  dir=${2:?DIR}
  [ -d "$dir" ] || exit 0
  kind=$(cat "$dir/kind" 2>/dev/null || echo "")
  uri=$(cat "$dir/uri" 2>/dev/null || echo "")
  # The guests this daemon runs (all of its domains: it is ours) go first.
  if [ -n "$uri" ]; then
    for d in $(timeout 10 virsh -q -c "$uri" list --name 2>/dev/null); do
      timeout 10 virsh -q -c "$uri" destroy "$d" >/dev/null 2>&1 || true
    done
  fi
  for p in libvirtd virtlogd; do
    if [ -f "$dir/$p.pid" ]; then kill "$(cat "$dir/$p.pid")" 2>/dev/null || true; fi
  done
  case "$kind" in
  netns*)
    ns=${kind#netns }
    # Guests the host still runs (QEMU children of that libvirtd) go with it.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip link del "$ns-h" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    ;;
  esac
  for p in libvirtd virtlogd; do
    if [ -f "$dir/$p.pid" ]; then
      pid=$(cat "$dir/$p.pid")
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$dir"
  ;;
*)
  die "usage: $0 start-local DIR | start NAME N DIR | stop-daemon DIR | start-daemon DIR | stop DIR"
  ;;
esac
