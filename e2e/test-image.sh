#!/usr/bin/env bash
# The tiny "operating system" the provisioning tests install: a bootable raw
# disk image (MBR, one FAT partition with SYSLINUX, Debian's kernel and
# girder's ramdisk initrd with another /init) and a qcow2 copy of it. Booted
# from its disk, it prints
#
#   GIRDER-INSTALLED marker=<the girder-test-marker: line of its user-data> network-config=<yes|no>
#
# on its serial console, reads the credentials girder's deploy agent left in
# its cloud-init seed (the CIDATA partition) and runs `girder agent` as the
# installed system's agent (bootSource Disk).
#
#   e2e/test-image.sh build RAMDISK_DIR   build (once per ramdisk) and print the directory
#                                         holding disk.img, disk.qcow2 and their sha256/sha512
#
# Cached under $GIRDER_CACHE/test-image/<key>/. Needs syslinux, syslinux-common,
# mtools, dosfstools, fdisk (sfdisk) and qemu-utils (installed when missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. e2e/lib.sh

GIRDER_CACHE="${GIRDER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/girder}"
log() { echo "test-image: $*" >&2; }
TMP_DIR=""
trap '[ -z "$TMP_DIR" ] || rm -rf "$TMP_DIR"' EXIT
DEBS=(syslinux syslinux-common mtools dosfstools fdisk qemu-utils cpio)

installed_init() {
  cat <<'INIT'
#!/bin/sh
# /init of the test image's installed system (not girder's ramdisk).
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
echo 4 >/proc/sys/kernel/printk
/etc/girder/drivers.sh
mkdir -p /seed
seed=
for i in $(seq 1 40); do
  seed="$(findfs LABEL=CIDATA 2>/dev/null || true)"
  [ -n "$seed" ] && break
  sleep 0.25
done
marker=
network=no
if [ -n "$seed" ] && mount -t vfat -o ro "$seed" /seed; then
  marker="$(sed -n 's/^girder-test-marker: *//p' /seed/user-data | head -n1 | tr -d '\r')"
  [ -s /seed/network-config ] && network=yes
fi
echo
echo "GIRDER-INSTALLED marker=$marker network-config=$network seed=$seed"
mac="$(sed -n 's/.*macaddress: *"*\([0-9a-fA-F:]*\)"*.*/\1/p' /seed/network-config 2>/dev/null | head -n1)"
iface="$(/etc/girder/nic.sh "$mac")"
/etc/girder/dhcp.sh "$iface"
cp /seed/girder-agent.json /run/girder-agent.json 2>/dev/null || echo "no girder-agent.json in the seed"
while :; do
  NO_COLOR=1 girder agent --credentials /run/girder-agent.json --log-format text --state-dir /run/girder-agent
  echo "girder agent exited ($?); starting it again in 5 seconds"
  sleep 5
done
INIT
}

build() {
  local ramdisk="${1:?usage: $0 build RAMDISK_DIR}" key dir tmp
  ensure_debs "${DEBS[@]}"
  mkdir -p "$GIRDER_CACHE/test-image"
  exec 9>"$GIRDER_CACHE/test-image/.lock"
  flock 9
  key="$( { basename "$ramdisk"; installed_init; sed -n '/^build()/,$p' "$0"; } | sha256sum | cut -c1-12)"
  dir="$GIRDER_CACHE/test-image/$key"
  if [ -f "$dir/.girder-complete" ]; then echo "$dir"; return; fi
  log "building $dir"
  tmp="$(mktemp -d)"
  TMP_DIR="$tmp"
  # The installed system's initrd: the ramdisk's, with another /init laid over
  # it (the kernel unpacks concatenated archives in order).
  mkdir -p "$tmp/overlay"
  installed_init >"$tmp/overlay/init"
  chmod 755 "$tmp/overlay/init"
  cp "$ramdisk/initrd.img" "$tmp/initrd.img"
  (cd "$tmp/overlay" && echo init | cpio --quiet -o -H newc -R 0:0) | gzip -6 >>"$tmp/initrd.img"
  # A 40 MiB disk: MBR, partition 1 (FAT16, bootable) from 1 MiB to the end.
  local size=$((40 * 1024 * 1024)) start=$((1024 * 1024))
  truncate -s "$size" "$tmp/disk.img"
  printf 'label: dos\nstart=2048, type=6, bootable\n' | sfdisk --quiet "$tmp/disk.img"
  truncate -s $((size - start)) "$tmp/part.img"
  mkfs.vfat -F 16 -n GIRDERBOOT "$tmp/part.img" >/dev/null
  printf 'DEFAULT girder\nPROMPT 0\nTIMEOUT 0\nLABEL girder\n  KERNEL vmlinuz\n  APPEND initrd=initrd.img console=ttyS0\n' >"$tmp/syslinux.cfg"
  MTOOLS_SKIP_CHECK=1 mcopy -i "$tmp/part.img" "$ramdisk/vmlinuz" "$tmp/initrd.img" "$tmp/syslinux.cfg" ::/
  syslinux --install "$tmp/part.img"
  dd if="$tmp/part.img" of="$tmp/disk.img" bs=1M seek=1 conv=notrunc status=none
  dd if=/usr/lib/syslinux/mbr/mbr.bin of="$tmp/disk.img" bs=440 count=1 conv=notrunc status=none
  qemu-img convert -f raw -O qcow2 -c "$tmp/disk.img" "$tmp/disk.qcow2"
  rm -rf "$dir"
  mkdir -p "$dir"
  mv "$tmp/disk.img" "$tmp/disk.qcow2" "$dir/"
  (cd "$dir" && sha256sum disk.img disk.qcow2 >SHA256SUMS && sha512sum disk.img disk.qcow2 >SHA512SUMS)
  touch "$dir/.girder-complete"
  log "built $dir (raw $(du -h --apparent-size "$dir/disk.img" | cut -f1), qcow2 $(du -h "$dir/disk.qcow2" | cut -f1))"
  echo "$dir"
}

case "${1:-}" in
  build) build "${2:-}" ;;
  *) echo "usage: $0 build RAMDISK_DIR" >&2; exit 2 ;;
esac
