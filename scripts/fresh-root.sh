#!/usr/bin/env bash
# Run a command in a brand-new Debian 12 machine of the project's kind, as a new user
# would: a minimal Debian root (debootstrap --variant=minbase) holding only what such a
# machine ships (the Rust toolchain, gcc, git, python3, qemu-utils, ca-certificates), the
# project cloned into it, and the command run there as root. Nothing of this host's
# package installs, /etc, ~/.cache or cargo registry reaches it: only the package
# registries' configuration (apt sources, CA certificates, resolv.conf).
#
# `.ci/run` runs `scripts/fresh-root.sh ./scripts/test.sh`, so a green CI means the
# README's test command works on a new machine.
#
# Usage: scripts/fresh-root.sh [--keep] [COMMAND]     (default COMMAND: ./scripts/test.sh)
#   --keep   leave the run's root in place afterwards (it is removed otherwise,
#            unless the command failed; its path is printed).
# What is cloned: HEAD plus uncommitted changes to tracked files (`git stash create`);
# untracked files are not.
# Env: CASTRA_FRESH_DIR   where base and run roots live (default /var/tmp/castra-fresh)
#
# The command runs with the root as the root of its own mount namespace (pivot_root, so
# programs that re-enter their namespace, as Nix does, stay inside), and everything it
# leaves running is killed afterwards.
#
# The base root is made once per (suite, mirror, package list, toolchain) and never
# entered: each run works on its own copy, so nothing ever installs into the cached one.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD

keep=0
if [ "${1:-}" = "--keep" ]; then keep=1; shift; fi
command=${1:-./scripts/test.sh}

say() { echo "fresh-root: $*" >&2; }
die() { say "error: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mounts)"

t0=$(date +%s)
elapsed() { echo "$(($(date +%s) - t0))s"; }

# --- the host's own needs: debootstrap only -------------------------------------------
if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap on this host"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
fi

suite=bookworm
sources=/etc/apt/sources.list.d/debian.sources
if [ -f "$sources" ]; then
  mirror=$(awk '/^URIs:/{print $2; exit}' "$sources")
else
  mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}
# What a new machine of this kind already has (beyond minbase).
include=ca-certificates,git,gcc,libc6-dev,python3,qemu-utils
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
toolchain=$(sed -n 's/^default_toolchain = "\(.*\)"/\1/p' "$rustup_home/settings.toml" 2>/dev/null || true)
toolchain=${toolchain:-stable-x86_64-unknown-linux-gnu}
[ -d "$rustup_home/toolchains/$toolchain" ] || die "no Rust toolchain at $rustup_home/toolchains/$toolchain"
rust_version=$("$rustup_home/toolchains/$toolchain/bin/rustc" --version)

dir=${CASTRA_FRESH_DIR:-/var/tmp/castra-fresh}
key=$(echo "1 $suite $mirror $include $rust_version" | sha256sum | cut -c1-16)
base="$dir/base-$key"
mkdir -p "$dir"

# --- 1. the pristine base root (cached) -----------------------------------------------
if [ ! -f "$base/.complete" ]; then
  say "making the base root $base (debootstrap $suite minbase + $include)"
  rm -rf --one-file-system "$base"
  mkdir -p "$base"
  if ! debootstrap --variant=minbase --include="$include" "$suite" "$base" "$mirror" \
      >"$dir/debootstrap-$key.log" 2>&1; then
    tail -20 "$dir/debootstrap-$key.log" >&2
    rm -rf --one-file-system "$base"
    die "debootstrap failed (log: $dir/debootstrap-$key.log)"
  fi
  # The package registry, as this host reaches it.
  if [ -f "$sources" ]; then
    cp -a "$sources" "$base/etc/apt/sources.list.d/"
    rm -f "$base/etc/apt/sources.list"
  fi
  for conf in /etc/apt/apt.conf.d/99artifact-registry; do
    [ -f "$conf" ] && cp -a "$conf" "$base/etc/apt/apt.conf.d/"
  done
  # The Rust toolchain as rustup lays it out, without any registry cache.
  mkdir -p "$base/root/.rustup/toolchains" "$base/root/.cargo"
  cp -a "$cargo_home/bin" "$base/root/.cargo/"
  [ -f "$cargo_home/env" ] && cp -a "$cargo_home/env" "$base/root/.cargo/"
  cp -a "$rustup_home/settings.toml" "$base/root/.rustup/"
  cp -a "$rustup_home/toolchains/$toolchain" "$base/root/.rustup/toolchains/"
  version=$(echo "$rust_version" | awk '{print $2}')
  [ "$toolchain" = "$version-x86_64-unknown-linux-gnu" ] ||
    ln -s "$toolchain" "$base/root/.rustup/toolchains/$version-x86_64-unknown-linux-gnu"
  touch "$base/.complete"
  say "base root ready in $(elapsed)"
else
  say "reusing the pristine base root $base"
fi

# --- 2. this run's copy ---------------------------------------------------------------
# Earlier runs' roots (kept after a failure) go, unless a run is still using one: its
# mount namespace (recorded in run.X.mntns while it runs) still has a process.
# The pids of every process in the mount namespace a run recorded in ROOT.mntns.
ns_pids() { # ROOT
  local ns p
  ns=$(cat "$1.mntns" 2>/dev/null) || return 0
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns" ] && echo "${p#/proc/}"
  done
  return 0
}
in_use() { [ -n "$(ns_pids "$1")" ]; }
for old in "$dir"/run.*; do
  [ -d "$old" ] || continue
  if in_use "$old"; then continue; fi
  rm -rf --one-file-system "$old"
  rm -f "$old.mntns"
done
root=$(mktemp -d "$dir/run.XXXXXX")
chmod 755 "$root"
nsfile="$root.mntns"
teardown() {
  # Whatever the command left running (a broker, a QEMU) goes with the root: every
  # process in the run's mount namespace. Its mounts go with the last of them.
  local pids
  mapfile -t pids < <(ns_pids "$root")
  if [ ${#pids[@]} -gt 0 ]; then
    say "killing ${#pids[@]} process(es) left in the root"
    kill -9 "${pids[@]}" 2>/dev/null || true
    sleep 1
  fi
  rm -f "$nsfile"
}
trap teardown EXIT
cp -a "$base/." "$root/"
rm -f "$root/.complete"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# Registries may sit behind a proxy whose CA this host trusts.
cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
rev=$(git stash create 2>/dev/null || true)
rev=${rev:-HEAD}
git clone -q "$src" "$root/root/project"
git -C "$root/root/project" checkout -q --detach "$rev"
say "root $root ready in $(elapsed) (project at $(git -C "$root/root/project" rev-parse --short HEAD))"

# --- 3. the command, as a new user runs it ---------------------------------------------
say "running: $command"
set +e
# The root becomes the root of a private mount namespace (pivot_root, not chroot): a
# program that re-enters its mount namespace (Nix does, before `nix run` executes the
# app) then lands in the new root, as on a real machine, and not in this host's.
unshare --mount --propagation private --fork env ROOT="$root" NSFILE="$nsfile" bash -c '
  set -e
  readlink /proc/self/ns/mnt > "$NSFILE"
  mount --bind "$ROOT" "$ROOT"
  mount -t proc proc "$ROOT/proc"
  mount --rbind /sys "$ROOT/sys"
  mount --rbind /dev "$ROOT/dev"
  mount -t tmpfs -o mode=1777 tmpfs "$ROOT/dev/shm"
  mount -t tmpfs -o mode=755 tmpfs "$ROOT/run"
  cd "$ROOT"
  mkdir -p .host-root
  pivot_root . .host-root
  umount -l /.host-root
  rmdir /.host-root
  exec /usr/bin/env -i HOME=/root TERM=dumb CI=true LANG=C.UTF-8 \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c "cd /root/project && $0"
' "$command"
code=$?
set -e
teardown
trap - EXIT
if [ "$code" -eq 0 ] && [ "$keep" -eq 0 ]; then
  rm -rf --one-file-system "$root"
  say "passed in $(elapsed) (root removed)"
else
  say "command exited $code after $(elapsed); root kept at $root"
fi
exit "$code"
