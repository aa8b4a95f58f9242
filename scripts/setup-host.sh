#!/usr/bin/env bash
# Install what castra needs on a Debian/Ubuntu host: QEMU, the packages the
# default guest image is built from, debootstrap and e2fsprogs for the
# Debian+Nix test guest (guest/debian-nix/build.sh), and a Rust toolchain if
# none is present.
# Idempotent; run as root (or with sudo available).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
for pkg in qemu-system-x86 qemu-utils busybox-static cpio xz-utils kmod nix-bin ca-certificates curl \
  debootstrap e2fsprogs; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
echo "setup: ok ($(qemu-system-x86_64 --version | head -1); $(cargo --version))"
