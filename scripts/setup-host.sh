#!/usr/bin/env bash
# Install what castra needs on a Debian/Ubuntu host: QEMU, the packages the
# default guest image is built from, debootstrap and e2fsprogs for the
# Debian+Nix test guest (guest/debian-nix/build.sh), Nix's build users, and a
# Rust toolchain if none is present.
# Idempotent; run as root (or with sudo available).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# python3: tests/docs.rs runs the Python guest client printed in docs/BUS.md.
# linux-source-6.1 and the rest of the third line build the fast guest kernel
# (src/image/kernel.rs: make tinyconfig + guest/kernel/castra.config).
# faketime: tests/bus_campaign.rs steps the broker's wall clock back while it runs.
# g++: libFuzzer (the libfuzzer-sys crate) is C++, built by scripts/fuzz.sh.
# libvirt-daemon-system, libvirt-clients: the libvirt backend ([hosts.NAME], docs/HOSTS.md)
# and its tests, which start their own daemons (scripts/libvirt-host.sh); iproute2 for the
# network namespaces those tests make for a second "host".
# redis-server, mosquitto, nats-server: the peers `cargo bench --bench bus`
# measures the bus against (Redis 7 `appendfsync always` is its baseline).
packages=(qemu-system-x86 qemu-utils busybox-static cpio xz-utils kmod nix-bin ca-certificates curl
  debootstrap e2fsprogs tmux python3 openssh-client faketime g++
  linux-source-6.1 make gcc libc6-dev bc bison flex libelf-dev perl tar
  libvirt-daemon-system libvirt-clients iproute2 redis-server mosquitto nats-server)
missing() { for pkg in "${packages[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || echo "$pkg"; done; }
# Twice at most: installing one package can remove another that conflicts with it
# (qemu-system-x86 from bookworm removes a backported qemu-utils), and the second
# round puts back the matching version.
for round in 1 2; do
  mapfile -t need < <(missing)
  [ ${#need[@]} -eq 0 ] && break
  echo "setup: installing ${need[*]}"
  [ "$round" -eq 1 ] && $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
done
mapfile -t need < <(missing)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: error: still not installed after apt-get install: ${need[*]}" >&2
  exit 1
fi

# Root's Nix builds as the members of `build-users-group` (default: nixbld).
# Debian makes that group in nix-setup-systemd, which needs systemd; make the
# same group and users here (what its postinst does), leaving any that exist.
if ! getent group nixbld >/dev/null; then
  echo "setup: creating the nixbld group for Nix build users"
  $SUDO groupadd --system nixbld
fi
for n in $(seq 1 10); do
  if ! id "nixbld$n" >/dev/null 2>&1; then
    $SUDO useradd --system --comment "Nix build user $n" --home-dir /var/empty \
      --gid nixbld --groups nixbld --no-user-group --shell /usr/sbin/nologin "nixbld$n"
  fi
done

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"
for tool in qemu-system-x86_64 qemu-img busybox cpio xz depmod nix nix-instantiate debootstrap mkfs.ext4 tmux python3 faketime g++ make gcc bc bison flex virsh libvirtd virtlogd ip redis-server mosquitto nats-server cargo; do
  command -v "$tool" >/dev/null || { echo "setup: error: $tool is not on PATH after setup" >&2; exit 1; }
done
[ -f /usr/src/linux-source-6.1.tar.xz ] || { echo "setup: error: /usr/src/linux-source-6.1.tar.xz is missing (package linux-source-6.1)" >&2; exit 1; }
echo "setup: ok ($(qemu-system-x86_64 --version | head -1); $(cargo --version))"
