#!/usr/bin/env bash
# What a PXE-booted test VM boots: Debian's kernel (downloaded, never installed
# on this host) and a tiny busybox initrd whose /init prints one line on the
# console and powers the VM off:
#
#   GIRDER-PXE-BOOTED marker=<girder.marker= of the cmdline> mac=<girder.mac= of the cmdline>
#
#   e2e/pxe-assets.sh build      build (once; cached by package versions) and print the directory
#                                holding vmlinuz and initrd.img; installs the Debian packages the
#                                PXE lab needs when missing
#   e2e/pxe-assets.sh accel      print the accelerator VMs get here: kvm, or tcg when /dev/kvm is
#                                missing or does not boot the kernel (probed once per host boot)
#   e2e/pxe-assets.sh check [DIR]  boot DIR's (or the built) kernel and initrd in QEMU without
#                                any network; checks that the marker shows and the VM powers off
#
# Cached under $GIRDER_CACHE/pxe/<key>/ (GIRDER_CACHE defaults to ~/.cache/girder), like the
# other built peers, whatever GIRDER_HOME (a control plane's state) is.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GIRDER_CACHE="${GIRDER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/girder}"
log() { echo "pxe-assets: $*" >&2; }
TMP_DIR=""
trap '[ -z "$TMP_DIR" ] || rm -rf "$TMP_DIR"' EXIT

# The packages of the PXE lab: QEMU and its iPXE option ROMs, iPXE's own
# binaries served over TFTP (undionly.kpxe, ipxe.efi, snponly.efi), OVMF, busybox
# for the initrd, cpio to pack it, and dnsmasq (the reference PXE server and the
# "site DHCP" of the tests), iproute2 for the lab's namespaces.
DEBS=(qemu-system-x86 ipxe-qemu ipxe ovmf busybox-static cpio dnsmasq-base iproute2)

# /init of the initrd (busybox sh). Kernel messages are silenced first so that
# none splits the marker line.
init_script() {
  cat <<'INIT'
#!/bin/sh
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo 0 >/proc/sys/kernel/printk
marker=
mac=
for word in $(cat /proc/cmdline); do
  case "$word" in
    girder.marker=*) marker="${word#girder.marker=}" ;;
    girder.mac=*) mac="${word#girder.mac=}" ;;
  esac
done
echo
echo "GIRDER-PXE-BOOTED marker=$marker mac=$mac"
sync
poweroff -f
echo o >/proc/sysrq-trigger
sleep 5
INIT
}

# lock: serialises builds and probes of concurrent test binaries (fd 9, held
# until the script exits).
lock() {
  mkdir -p "$GIRDER_CACHE/pxe"
  exec 9>"$GIRDER_CACHE/pxe/.lock"
  flock 9
}

build() {
  ensure_debs "${DEBS[@]}"
  lock
  local kernel key dir tmp
  kernel="$(debian_kernel "$GIRDER_CACHE/kernel")"
  # The key names the kernel package and version, and hashes what the initrd is
  # made of (its /init and the busybox version), so a change to either rebuilds.
  key="$(basename "$kernel")-$( { init_script; dpkg-query -W -f='${Version}' busybox-static; } | sha256sum | cut -c1-8)"
  dir="$GIRDER_CACHE/pxe/$key"
  # The marker file is written last: a directory without it is a broken build, redone.
  if [ -f "$dir/.girder-complete" ] && [ -s "$dir/vmlinuz" ] && [ -s "$dir/initrd.img" ]; then
    echo "$dir"
    return
  fi
  log "building $dir (first run only)"
  tmp="$(mktemp -d)"
  TMP_DIR="$tmp"
  rm -rf "$dir"
  mkdir -p "$dir" "$tmp/root"
  cp "$kernel/vmlinuz" "$dir/vmlinuz"

  # The initrd: busybox (static) and /init, as a gzip'd newc cpio owned by root.
  local root="$tmp/root" applet
  mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys"
  cp /bin/busybox "$root/bin/busybox"
  for applet in sh mount echo cat sync poweroff sleep; do ln -s busybox "$root/bin/$applet"; done
  init_script >"$root/init"
  chmod 755 "$root/init"
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 >"$dir/initrd.img"

  touch "$dir/.girder-complete"
  log "built $dir ($(du -h "$dir/vmlinuz" | cut -f1) kernel, $(du -h "$dir/initrd.img" | cut -f1) initrd)"
  echo "$dir"
}

# boot DIR MARKER SECONDS ACCEL...: boots DIR's kernel and initrd with no
# network; succeeds when the VM printed the marker line and powered itself off
# within SECONDS. The console goes to stdout.
boot() {
  local dir="$1" marker="$2" seconds="$3" out
  shift 3
  out="$(timeout "$seconds" qemu-system-x86_64 "$@" -m 256 -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "$dir/vmlinuz" -initrd "$dir/initrd.img" -append "console=ttyS0 girder.marker=$marker girder.mac=none" \
    </dev/null 2>&1)" || { echo "$out"; return 1; }
  echo "$out"
  tr -d '\r' <<<"$out" | grep -q "^GIRDER-PXE-BOOTED marker=$marker mac=none"
}

# Which accelerator the VMs get: kvm when /dev/kvm is there and actually boots
# the kernel, else tcg. /dev/kvm alone proves little: under a nested hypervisor
# such as PVM (kvm_pvm) SeaBIOS runs but a stock kernel hangs at once. The probe
# (a KVM boot, about a second when it works) is cached per host boot.
# GIRDER_PXE_ACCEL=kvm|tcg overrides it.
accel() {
  if [ -n "${GIRDER_PXE_ACCEL:-}" ]; then echo "$GIRDER_PXE_ACCEL"; return; fi
  if [ ! -w /dev/kvm ]; then
    log "no usable /dev/kvm: VMs run with TCG (slower)"
    echo tcg
    return
  fi
  local boot_id cache dir
  boot_id="$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)"
  cache="$GIRDER_CACHE/pxe/accel-$boot_id"
  [ -s "$cache" ] || { dir="$(build)"; lock; }
  if [ ! -s "$cache" ]; then
    if boot "$dir" probe 30 -accel kvm >/dev/null; then
      echo kvm >"$cache"
    else
      log "/dev/kvm is there but a KVM guest does not boot the kernel (nested hypervisor?): VMs run with TCG"
      echo tcg >"$cache"
    fi
    local stale
    for stale in "$GIRDER_CACHE"/pxe/accel-*; do [ "$stale" = "$cache" ] || rm -f "$stale"; done
  fi
  cat "$cache"
}

check() {
  local dir="${1:?usage: $0 check DIR}" marker="check-$$" acc start out
  acc="$(accel)"
  start=$SECONDS
  out="$(boot "$dir" "$marker" 180 -accel "$acc")" || { echo "$out" >&2; log "no marker line, or QEMU did not power off by itself ($acc)"; exit 1; }
  log "boots with $acc in $((SECONDS - start)) s: marker $marker seen, VM powered off"
}

case "${1:-}" in
  build) build ;;
  accel) accel ;;
  check) check "${2:-$(build)}" ;;
  *) echo "usage: $0 build | accel | check [DIR]" >&2; exit 2 ;;
esac
