#!/usr/bin/env bash
# Build the Debian 12 (bookworm) + Nix guest image from Debian packages only:
# debootstrap (minbase + systemd, nix-bin, the Debian kernel), the static
# castra agent as a systemd service, nix set up for offline flakes, all packed
# into an ext4 filesystem with `mkfs.ext4 -d` (no loop mounts) and converted
# to qcow2. castra boots it by direct kernel boot with the root on the disk:
#
#   image = { disk = "<dir>/disk.qcow2", kernel = "<dir>/vmlinux",
#             initrd = "<dir>/initrd.img", cmdline = "<manifest cmdline>" }
#
# Two cache levels under <cache>/debian-nix (cache: $CASTRA_CACHE_DIR, else
# $XDG_CACHE_HOME/castra, else ~/.cache/castra): base-<key>/ is the plain
# debootstrap tree (keyed by suite, mirror, packages and $base_recipe, so a new
# agent does not download Debian again), <key>/ the finished image (keyed by
# the base key, this script, the files under guest/debian-nix/rootfs and the
# agent binary); `current` names the latest image key. A no-op when that image
# exists. Needs root (debootstrap, chroot) and: debootstrap, e2fsprogs,
# qemu-utils, xz-utils.
#
# Usage: guest/debian-nix/build.sh [--force]   (prints the image directory last)
# Env:   CASTRA_AGENT (static agent; default: the cargo target dir's release
#        build), DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# libdbi-perl: provides perl-dbdabi-94 for nix-bin's libdbd-sqlite3-perl (debootstrap
# does not resolve virtual packages).
# openssh-server: only for benches/exec_vs_ssh.rs (castra against OpenSSH on
# the same guest); disabled, and without host keys, until that bench starts it.
packages=systemd-sysv,udev,dbus,kmod,iproute2,mount,ca-certificates,nix-bin,libdbi-perl,linux-image-amd64,initramfs-tools,openssh-server
# Kernel command line: root on the overlay (/dev/vda). quiet: console output is
# slow under TCG. castra appends castra.vm=, castra.broker_port= and, under
# TCG, its clock arguments.
cmdline="console=ttyS0 root=/dev/vda rw quiet panic=-1 fsck.mode=skip systemd.show_status=false"
disk_size=4G
# Bump when the debootstrap step itself changes.
base_recipe=1

force=0
if [ "${1:-}" = "--force" ]; then force=1; fi

if [ -n "${CASTRA_CACHE_DIR:-}" ]; then cache="$CASTRA_CACHE_DIR"
elif [ -n "${XDG_CACHE_HOME:-}" ]; then cache="$XDG_CACHE_HOME/castra"
else cache="$HOME/.cache/castra"; fi
agent="${CASTRA_AGENT:-${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-gnu/release/castra-agent}"

say() { echo "debian-nix: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap and chroot); run it with sudo"
[ -x "$agent" ] || die "no static castra-agent at $agent; build it with scripts/build.sh (or set CASTRA_AGENT)"
file_type="$(od -An -tx1 -N4 "$agent" | tr -d ' ')"
[ "$file_type" = 7f454c46 ] || die "$agent is not an ELF executable"
if LC_ALL=C ldd "$agent" 2>&1 | grep -q '=>'; then
  die "$agent is dynamically linked; the guest needs the static build (scripts/build.sh)"
fi
for tool in debootstrap mkfs.ext4 qemu-img xz; do
  command -v "$tool" >/dev/null || die "$tool is missing; run scripts/setup-host.sh"
done

# --- the keys: everything the image is made of, by content ----------------------
base_key="$(echo "base $base_recipe $suite $mirror $packages" | sha256sum | cut -c1-16)"
key="$(
  {
    echo "format 1 $base_key $cmdline $disk_size"
    sha256sum "$0" | cut -d' ' -f1
    sha256sum "$agent" | cut -d' ' -f1
    (cd "$here/rootfs" && find . -type f | LC_ALL=C sort | xargs sha256sum)
  } | sha256sum | cut -c1-16
)"
images="$cache/debian-nix"
out="$images/$key"
if [ "$force" -eq 0 ] && [ -f "$out/manifest.json" ]; then
  say "up to date ($out)"
  echo "$key" >"$images/current.tmp" && mv "$images/current.tmp" "$images/current"
  echo "$out"
  exit 0
fi

start=$(date +%s)
mkdir -p "$images" "$cache/debs/debootstrap"
scratch="$(mktemp -d "$images/.build-$key-XXXXXX")"
chmod 755 "$scratch"
trap 'rm -rf "$scratch"' EXIT
root="$scratch/root"

# --- 1. debootstrap (cached as base-<base_key>) ---------------------------------
base="$images/base-$base_key"
if [ ! -f "$base/done" ]; then
  say "debootstrap $suite ($packages) from $mirror"
  rm -rf "$base" && mkdir -p "$base"
  debootstrap --variant=minbase --include="$packages" \
    --cache-dir="$cache/debs/debootstrap" "$suite" "$base/root" "$mirror" >"$scratch/debootstrap.log" 2>&1 ||
    { tail -30 "$scratch/debootstrap.log" >&2; rm -rf "$base"; die "debootstrap failed (log above)"; }
  touch "$base/done"
  say "debootstrap done in $(($(date +%s) - start))s"
else
  say "reusing the debootstrap tree $base"
fi
cp -a "$base/root" "$root"

# --- 2. castra's files, services, a small initramfs -----------------------------
say "installing the agent and configuration"
cp -R --no-preserve=ownership "$here/rootfs/." "$root/"
install -m 0755 "$agent" "$root/usr/bin/castra-agent"
# Fixed at build time, so first-boot logic (presets) never runs in a guest.
od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$root/etc/machine-id"
echo >>"$root/etc/machine-id"
chroot "$root" systemctl enable -q castra-network.service castra-agent.service
# sshd stays off (castra needs none), and host keys made here would be shared
# by every guest of the image: whoever starts sshd runs `ssh-keygen -A` first.
chroot "$root" systemctl disable -q ssh.service
rm -f "$root"/etc/ssh/ssh_host_*
# No console login (castra has no console), no timers a short-lived VM never
# needs, nothing that only costs boot time under TCG (measured with
# systemd-analyze blame in the guest).
chroot "$root" systemctl mask -q serial-getty@ttyS0.service getty@tty1.service \
  apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
  e2scrub_reap.service modprobe@drm.service \
  modprobe@dm_mod.service dev-hugepages.mount sys-kernel-debug.mount sys-kernel-tracing.mount
chroot "$root" update-initramfs -u -k all >"$scratch/initramfs.log" 2>&1 ||
  { cat "$scratch/initramfs.log" >&2; die "update-initramfs failed"; }
# Kernel modules for hardware a QEMU guest never has (about 2/3 of them).
kmods="$(echo "$root"/usr/lib/modules/*)"
rm -rf "$kmods"/kernel/sound "$kmods"/kernel/drivers/{gpu,media,infiniband,staging,iio,isdn,mtd,bluetooth,net/wireless,net/ethernet,net/can,net/usb,usb,video,hid,input/touchscreen,input/joystick,input/tablet,scsi,ata,md,nvme,thunderbolt,platform,hwmon,leds,mfd,misc,pinctrl,power,regulator,rtc,spi,i2c,ssb,bcma,memstick,mmc,uwb,w1,watchdog,firewire,edac,crypto,accel}
chroot "$root" depmod -a "${kmods##*/}"
nix_version="$(chroot "$root" dpkg-query -W -f '${Version}' nix-bin)"
# Size: the image needs neither package caches nor documentation.
rm -rf "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*

# --- 3. kernel (uncompressed, PVH for -M microvm) and initrd ---------------------
vmlinuz="$(ls "$root"/boot/vmlinuz-* | head -1)"
initrd="$(ls "$root"/boot/initrd.img-* | head -1)"
kernel_version="${vmlinuz##*/vmlinuz-}"
# bzImage: the compressed payload starts at (setup_sects + 1) * 512 + payload_offset.
setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$vmlinuz" | tr -d ' ')
payload_offset=$(od -An -tu4 -j $((0x248)) -N4 "$vmlinuz" | tr -d ' ')
offset=$(((setup_sects + 1) * 512 + payload_offset))
[ "$(od -An -tx1 -j "$offset" -N6 "$vmlinuz" | tr -d ' ')" = fd377a585a00 ] ||
  die "$vmlinuz: no XZ payload at offset $offset"
# xz stops after the stream, so tail may die of SIGPIPE: check the result instead.
(set +o pipefail; tail -c +$((offset + 1)) "$vmlinuz" | xz -dc --single-stream >"$scratch/vmlinux") || true
[ "$(od -An -tx1 -N4 "$scratch/vmlinux" | tr -d ' ')" = 7f454c46 ] || die "$vmlinuz: the payload is not an ELF kernel"
cp "$initrd" "$scratch/initrd.img"

# --- 4. the disk: ext4 from the directory, then qcow2 -----------------------------
say "mkfs.ext4 -d ($(du -sh "$root" | cut -f1) of files) and qemu-img convert"
truncate -s "$disk_size" "$scratch/disk.raw"
mkfs.ext4 -q -F -L castra-root -m 0 -d "$root" "$scratch/disk.raw"
qemu-img convert -O qcow2 "$scratch/disk.raw" "$scratch/disk.qcow2"
rm -f "$scratch/disk.raw"
rm -rf "$root"

took=$(($(date +%s) - start))
cat >"$scratch/manifest.json" <<EOF
{
  "format": 1,
  "key": "$key",
  "suite": "$suite",
  "kernel_version": "$kernel_version",
  "nix_bin_version": "$nix_version",
  "disk": "disk.qcow2",
  "kernel": "vmlinux",
  "initrd": "initrd.img",
  "cmdline": "$cmdline",
  "disk_bytes": $(stat -c %s "$scratch/disk.qcow2"),
  "build_seconds": $took
}
EOF
rm -f "$scratch"/*.log
rm -rf "$out"
mv "$scratch" "$out"
trap - EXIT
echo "$key" >"$images/current.tmp" && mv "$images/current.tmp" "$images/current"
say "built in ${took}s: $out ($(du -sh "$out/disk.qcow2" | cut -f1) disk)"
echo "$out"
