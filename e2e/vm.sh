#!/usr/bin/env bash
# A QEMU machine whose power a BMC emulator controls: the chassis of the
# provisioning tests. It speaks ipmi_sim's chassis_control protocol, so
# OpenIPMI's ipmi_sim can drive it directly (lan.conf `chassis_control`), and
# the tests' Redfish notifier (sushy-tools' fake driver) drives it the same
# way. Power on starts QEMU (in the lab's network namespace, on its tap),
# power off stops it, a reset restarts it; the boot device decides the boot
# order of the next start: `pxe` puts the NIC first (once, then back to the
# disks, as a one-time boot override does), anything else the disks.
#
#   e2e/vm.sh chassis DIR get power|boot...
#   e2e/vm.sh chassis DIR set power 1|0 | reset 1 | shutdown 1 | boot pxe|default|cdrom|bios|none ...
#
# DIR/config (shell) says what the machine is: NETNS, TAP, MAC, ACCEL, MEMORY
# (MiB), DISKS ("SERIAL:PATH ...", in PCI order: vda, vdb...) and BOOT_DISK
# (optional: the serial of the disk the firmware tries first, as a site sets
# its boot order to the OS disk; SeaBIOS boots only the first disk it tries).
# QEMU's serial console is appended to DIR/serial.log; every start and stop
# is a line in DIR/actions.
#
# Like a BMC, a `set` of the power answers at once and the chassis acts on it
# in the background (one action at a time, in order): a BMC client that waits
# a few seconds for its answer retransmits, and a reset must not be done twice.
#
# Why not ipmi_sim's own VM link (QEMU's ipmi-bmc-extern with startcmd): in
# OpenIPMI 2.0.33 the boot device reaches neither the VM link nor startcmd,
# so a network boot once could not be honoured.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

pid_of() {
  local dir="$1" pid
  pid="$(cat "$dir/qemu.pid" 2>/dev/null || true)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
  local dir="$1" boot nic_index disk_index=1 args=() spec serial path n=0 index
  BOOT_DISK=""
  # shellcheck disable=SC1091
  . "$dir/config"
  [ -z "$(pid_of "$dir")" ] || return 0
  boot="$(cat "$dir/boot" 2>/dev/null || echo default)"
  if [ "$boot" = pxe ]; then nic_index=1; disk_index=2; else nic_index=90; fi
  for spec in $DISKS; do
    serial="${spec%%:*}"
    path="${spec#*:}"
    args+=(-drive "if=none,id=disk$n,file=$path,format=raw,cache=unsafe")
    index=$((disk_index + n + 1))
    [ "$serial" != "$BOOT_DISK" ] || index=$disk_index
    args+=(-device "virtio-blk-pci,drive=disk$n,serial=$serial,bootindex=$index")
    n=$((n + 1))
  done
  ip netns exec "$NETNS" qemu-system-x86_64 -accel "$ACCEL" -machine pc -m "$MEMORY" -nodefaults -display none \
    -chardev "file,id=console,path=$dir/serial.log,append=on" -serial chardev:console \
    -netdev "tap,id=net0,ifname=$TAP,script=no,downscript=no" \
    -device "virtio-net-pci,netdev=net0,mac=$MAC,bootindex=$nic_index" \
    "${args[@]}" -daemonize -pidfile "$dir/qemu.pid" >>"$dir/qemu.log" 2>&1 8>&-
  # A network boot happens once; the next start boots the disks again.
  [ "$boot" != pxe ] || echo default >"$dir/boot"
  echo "$(date +%s) start boot=$boot" >>"$dir/actions"
}

stop() {
  local dir="$1" pid i
  pid="$(pid_of "$dir" || true)"
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  echo "$(date +%s) stop" >>"$dir/actions"
}

# The QEMU chassis (chassis_control in e2e/lib.sh). While power actions are
# pending, the power is the one last asked for.
vm_power() {
  if compgen -G "$1/pending.*" >/dev/null; then cat "$1/power"
  elif [ -n "$(pid_of "$1")" ]; then echo 1
  else echo 0; fi
}
vm_set() {
  local dir="$1" parm="$2" val="$3" action pending
  case "$parm" in
    power) if [ "$val" = 0 ]; then action=off; else action=on; fi ;;
    reset) action=reset ;;
    shutdown) action=off ;;
    *) return 0 ;;
  esac
  if [ "$action" = off ]; then echo 0 >"$dir/power"; else echo 1 >"$dir/power"; fi
  pending="$(mktemp "$dir/pending.XXXXXX")"
  setsid "$0" act "$dir" "$action" "$pending" </dev/null >>"$dir/qemu.log" 2>&1 &
}

# act DIR on|off|reset PENDING: one power action, after those before it.
act() {
  local dir="$1" action="$2" pending="$3"
  # (QEMU, daemonized, must not inherit the lock: see start.)
  exec 8>"$dir/power.lock"
  flock 8
  case "$action" in
    on) start "$dir" ;;
    off) stop "$dir" ;;
    reset) stop "$dir"; start "$dir" ;;
  esac
  rm -f "$pending"
}

case "${1:-}" in
  chassis) shift; chassis_control vm "$@" ;;
  act) shift; act "$@" ;;
  *) echo "usage: $0 chassis DIR get|set ..." >&2; exit 2 ;;
esac
