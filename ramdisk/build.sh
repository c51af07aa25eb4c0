#!/usr/bin/env bash
# `make ramdisk`: girder's discovery/deploy ramdisk, which girder pxe boots on
# machines whose agent girder needs (discovery, in-band inspection, image
# install, cleaning). Made of Debian's kernel (downloaded, never installed
# here) and a few of its modules, busybox, and `girder agent` built as a
# static binary; nothing comes from anywhere but the package registries.
#
#   ramdisk/build.sh    build (or find in the cache) and print the directory
#                       holding vmlinuz and initrd.img (`make ramdisk`)
#
# Serve them with girder pxe: --assets-dir <that directory> (or copy them into
# yours) --discovery-kernel vmlinuz --discovery-initrd initrd.img
# --discovery-cmdline "console=ttyS0" (see README).
#
# Cached under $GIRDER_CACHE/ramdisk/<key>/, the key hashing everything the
# initrd is made of (the agent binary included), like the other built peers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. e2e/lib.sh

GIRDER_CACHE="${GIRDER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/girder}"
log() { echo "ramdisk: $*" >&2; }
TMP_DIR=""
trap '[ -z "$TMP_DIR" ] || rm -rf "$TMP_DIR"' EXIT

# The storage and network drivers the ramdisk carries (with what they need):
# QEMU's virtio devices, SATA, SAS/SCSI disks and NVMe, and the common
# server NICs. Real hardware loads what it asks for by modalias.
MODULES=(virtio_pci virtio_net virtio_blk virtio_scsi sd_mod ahci nvme
  e1000 e1000e igb ixgbe i40e tg3 bnxt_en vfat nls_iso8859_1 nls_cp437 nls_ascii)
# module_files KERNEL_DIR RELEASE NAME...: the .ko files of NAME and of
# everything they depend on (each module's modinfo `depends=`), relative to
# lib/modules/RELEASE.
module_files() {
  local base="$1/lib/modules/$2" name file deps seen=" " queue=()
  shift 2
  queue=("$@")
  local index
  index="$(cd "$base" && find kernel -name '*.ko' | sed 's|.*/\(.*\)\.ko$|\1 &|')"
  while [ ${#queue[@]} -gt 0 ]; do
    name="${queue[0]}"
    queue=("${queue[@]:1}")
    name="${name//-/_}"
    case "$seen" in *" $name "*) continue ;; esac
    seen="$seen$name "
    file="$(awk -v n="$name" '{ m = $1; gsub("-", "_", m) } m == n { print $2; exit }' <<<"$index")"
    if [ -z "$file" ]; then
      log "module $name is not in this kernel (built in, or absent); skipping"
      continue
    fi
    echo "$file"
    deps="$(grep -a -o 'depends=[a-z0-9_,-]*' "$base/$file" | head -n1 | cut -d= -f2 | tr ',' ' ')"
    for dep in $deps; do queue+=("$dep"); done
  done
}

build() {
  ensure_debs busybox-static cpio ca-certificates
  mkdir -p "$GIRDER_CACHE/ramdisk"
  exec 9>"$GIRDER_CACHE/ramdisk/.lock"
  flock 9
  local kernel release agent files key dir tmp
  kernel="$(debian_kernel "$GIRDER_CACHE/kernel")"
  release="$(ls "$kernel/lib/modules" | head -n1)"
  agent="$(build_static_girder)"
  files="$(module_files "$kernel" "$release" "${MODULES[@]}" | sort -u)"
  key="$( {
    basename "$kernel"
    dpkg-query -W -f='${Version}' busybox-static ca-certificates
    cat ramdisk/init ramdisk/*.sh ramdisk/udhcpc.script
    echo "$files"
    sha256sum <"$agent"
  } | sha256sum | cut -c1-12)"
  dir="$GIRDER_CACHE/ramdisk/$key"
  if [ -f "$dir/.girder-complete" ]; then
    echo "$dir"
    return
  fi
  log "assembling $dir"
  tmp="$(mktemp -d)"
  TMP_DIR="$tmp"
  local root="$tmp/root" applet file
  mkdir -p "$root"/{bin,dev,proc,sys,run,tmp,etc/girder,lib/modules/"$release"}
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
  done
  cp "$agent" "$root/bin/girder"
  # Debian's CA bundle, so that images can come over HTTPS from public CAs.
  mkdir -p "$root/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  cp ramdisk/init "$root/init"
  cp ramdisk/drivers.sh ramdisk/nic.sh ramdisk/dhcp.sh ramdisk/udhcpc.script "$root/etc/girder/"
  chmod 755 "$root/init" "$root"/etc/girder/*
  for file in $files; do
    mkdir -p "$root/lib/modules/$release/$(dirname "$file")"
    cp "$kernel/lib/modules/$release/$file" "$root/lib/modules/$release/$file"
  done
  cp "$kernel/lib/modules/$release/modules.builtin" "$kernel/lib/modules/$release/modules.order" "$root/lib/modules/$release/"
  /bin/busybox depmod -b "$root" "$release"
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$kernel/vmlinuz" "$dir/vmlinuz"
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -6 >"$dir/initrd.img"
  touch "$dir/.girder-complete"
  log "built $dir ($(du -h "$dir/vmlinuz" | cut -f1) kernel, $(du -h "$dir/initrd.img" | cut -f1) initrd, $(echo "$files" | wc -w) modules)"
  echo "$dir"
}

case "${1:-build}" in
  build) build ;;
  *) echo "usage: $0 [build]" >&2; exit 2 ;;
esac
