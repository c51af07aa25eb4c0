#!/usr/bin/env bash
# OpenIPMI's `ipmi_sim`, the real IPMI peer of the tests, and `ipmitool`, the
# reference client that cross-checks what girder's driver did. Both come from
# Debian (`openipmi`, `ipmitool`). A simulator listens on loopback only.
#
#   e2e/ipmi.sh install                 install openipmi and ipmitool when missing (idempotent);
#                                       prints the path of ipmi_sim
#   e2e/ipmi.sh start PORT DIR USER     write DIR/lan.conf and DIR/bmc.emu for a BMC on
#                                       127.0.0.1:PORT (UDP) with one admin user USER, whose
#                                       password is read from stdin (so it never shows in `ps`),
#                                       start ipmi_sim, print its PID and return at once (callers
#                                       poll it, e.g. with `ipmitool ... chassis power status`).
#                                       Optional, read when present:
#                                         DIR/extra.emu  more simulator commands (FRU data...)
#                                         DIR/guid       the system GUID, 32 hex digits (default: random);
#                                                        RMCP+ needs one (RAKP signs it)
#                                         DIR/chassis_control  the chassis program to use instead of the
#                                                        files below (e.g. "e2e/vm.sh chassis VMDIR")
#                                       The simulator writes DIR/sim.log and keeps state in DIR.
#   e2e/ipmi.sh stop PID                stop that simulator and wait until it is gone
#   e2e/ipmi.sh chassis DIR get|set ... the simulator's chassis_control program (see below)
#
# ipmi_sim has no machine behind it: Chassis Control and the boot flags are
# handed to a `chassis_control` program, `chassis` here, which keeps them in
# files so that Get Chassis Status reports what Chassis Control did:
#   DIR/power    1 or 0; power up/down, and soft shutdown (the simulated OS
#                obeys the ACPI request at once). A power cycle is ipmi_sim's:
#                power down now, power up one second later.
#   DIR/boot     the boot device selector: none, pxe, default (disk), cdrom, bios.
#                ipmi_sim 2.0.33 hands over only the device: the boot flags'
#                valid/persistent/EFI bits are not kept (Get System Boot
#                Options answers them as 0), and the request is encrypted in
#                DIR/sim.log, so tests compare those bytes with ipmitool's.
#   DIR/actions  one line per `set` (power 1, power 0, reset 1, shutdown 1, boot pxe...)
#   DIR/sim.log  ipmi_sim's debug output: sessions opened and closed, packets.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

log() { echo "ipmi: $*" >&2; }

install() {
  if ! command -v ipmi_sim >/dev/null || ! command -v ipmitool >/dev/null; then
    apt_install openipmi ipmitool
  fi
  command -v ipmi_sim
}

start() {
  local usage="usage: $0 start PORT DIR USER (password on stdin)"
  local port="${1:?$usage}" dir="${2:?$usage}" user="${3:?$usage}"
  local password sim self guid="" control
  IFS= read -r password || true
  [ -n "$password" ] || { log "no password on stdin"; exit 1; }
  case "$user$password" in *'"'* | *'\'*) log "user and password may not hold quotes or backslashes"; exit 1 ;; esac
  sim="$(install)"
  self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  [ -f "$dir/power" ] || echo 0 >"$dir/power"
  [ -f "$dir/boot" ] || echo default >"$dir/boot"
  # RMCP+ sessions need a GUID (RAKP 2 and 4 sign it): without one, ipmi_sim
  # answers IPMI 1.5 only.
  [ -f "$dir/guid" ] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$dir/guid"
  guid="guid $(tr -d ' \n-' <"$dir/guid")"
  # The chassis behind the BMC: files (the default), or DIR/chassis_control's
  # program (e2e/vm.sh drives a QEMU machine).
  control="$(cat "$dir/chassis_control" 2>/dev/null || echo "$self chassis $dir")"

  (
    umask 077
    cat >"$dir/lan.conf" <<EOF
name "girder-sim"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 $port
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    $guid
  endlan
  chassis_control "$control"
  user 2 true "$user" "$password" admin 10 none md2 md5 straight
EOF
  )
  {
    echo "mc_setbmc 0x20"
    # Get Device ID: device 0x20, revision 0x01, firmware 1.23, IPMI 2.0
    # support bits 0x9f, manufacturer 0x00b980, product 0x1234.
    echo "mc_add 0x20 0 no-device-sdrs 0x01 1 0x23 0x9f 0x00b980 0x1234"
    [ -f "$dir/extra.emu" ] && echo "include \"$dir/extra.emu\""
    echo "mc_enable 0x20"
  } >"$dir/bmc.emu"

  # setsid: its own process group, so `stop` ends exactly this simulator.
  # -d: session events and raw packets to stdout, so into DIR/sim.log. That
  # needs its console on (no -n), and the console wants a stdin it can poll
  # that never ends (/dev/null fails an assertion): a FIFO opened read-write.
  rm -f "$dir/console"
  mkfifo "$dir/console"
  setsid "$sim" -d -c "$dir/lan.conf" -f "$dir/bmc.emu" -s "$dir" <>"$dir/console" >>"$dir/sim.log" 2>&1 &
  echo $!
}

stop() {
  stop_process "${1:?usage: $0 stop PID}"
}

# The file chassis behind ipmi_sim (chassis_control in e2e/lib.sh).
file_power() { cat "$1/power"; }
file_set() {
  local dir="$1" parm="$2" val="$3"
  case "$parm" in
    power) if [ "$val" = 0 ]; then echo 0 >"$dir/power"; else echo 1 >"$dir/power"; fi ;;
    shutdown) echo 0 >"$dir/power" ;;
  esac
  echo "$parm $val" >>"$dir/actions"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  chassis) shift; chassis_control file "$@" ;;
  *) echo "usage: $0 install | start PORT DIR USER | stop PID | chassis DIR get|set ..." >&2; exit 2 ;;
esac
