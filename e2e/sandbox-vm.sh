#!/usr/bin/env bash
# The optional part of `make sandbox` (GIRDER_SANDBOX_VM=1): one QEMU VM
# PXE-boots against `girder pxe`. A network namespace `girder-sandbox` holds a
# bridge and the VM's tap; its veth peer `gp-sandbox` (10.199.0.1/24, host side)
# is where girder pxe answers DHCP, TFTP and HTTP. The BareMetalNode
# `pxe-vm-0` on Network `sandbox-prov` (Managed DHCP) boots a boot profile: a
# Debian kernel and a tiny initrd that prints a line and powers off.
# Needs root (namespaces, taps, ports 67/69).
#
#   e2e/sandbox-vm.sh up KUBECTL NAMESPACE RUN_DIR | down RUN_DIR
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. e2e/lib.sh
say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }

NETNS=girder-sandbox
HOST_IF=gp-sandbox
SUBNET=10.199.0
MAC=52:54:00:99:00:01

down() {
  local run="$1"
  if [ -f "$run/pxe.pid" ]; then stop_process "$(cat "$run/pxe.pid")"; rm -f "$run/pxe.pid"; fi
  if ip netns list | grep -qw "$NETNS"; then
    local pid
    for pid in $(ip netns pids "$NETNS" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns delete "$NETNS" 2>/dev/null || true
  fi
  ip link delete "$HOST_IF" 2>/dev/null || true
}

up() {
  local kubectl="$1" namespace="$2" run="$3" started=$SECONDS
  [ "$(id -u)" -eq 0 ] || { say "GIRDER_SANDBOX_VM=1 needs root (network namespaces, taps, ports 67 and 69)"; exit 1; }
  local assets accel
  assets="$(e2e/pxe-assets.sh build)"
  accel="$(e2e/pxe-assets.sh accel)"
  down "$run"
  if ip -o -4 addr show | grep -q " inet $SUBNET\."; then
    say "$SUBNET.0/24 is in use on this host; the sandbox VM needs it"; exit 1
  fi
  say "PXE lab: namespace $NETNS with a bridge, $HOST_IF ($SUBNET.1) on this host for girder pxe"
  ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
  ip -n "$NETNS" link add br0 type bridge forward_delay 0
  ip -n "$NETNS" link set br0 up
  ip link add "$HOST_IF" type veth peer name uplink netns "$NETNS"
  ip -n "$NETNS" link set uplink master br0
  ip -n "$NETNS" link set uplink up
  ip addr add "$SUBNET.1/24" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  # Router adverts spare iPXE its wait for IPv6 autoconfiguration.
  ip -n "$NETNS" -6 addr add fd00:199::3/64 dev br0 nodad
  ip netns exec "$NETNS" dnsmasq --conf-file=/dev/null --port=0 --bind-interfaces --interface=br0 \
    --enable-ra --dhcp-range=fd00:199::,ra-only,64 --pid-file="$run/ra.pid" --log-facility="$run/ra.log"

  say "applying Network sandbox-prov (Managed DHCP) and BareMetalNode pxe-vm-0 (MAC $MAC, a boot profile)"
  "$kubectl" apply -n "$namespace" -f - <<YAML | sed 's/^/    /'
apiVersion: girder.dev/v1alpha1
kind: Network
metadata:
  name: sandbox-prov
spec:
  cidr: $SUBNET.0/24
  gateway: $SUBNET.1
  ranges:
    - {name: nodes, type: static, start: $SUBNET.10, end: $SUBNET.49}
  dhcp: {mode: Managed}
---
apiVersion: girder.dev/v1alpha1
kind: BareMetalNode
metadata:
  name: pxe-vm-0
spec:
  bootMACAddress: "$MAC"
  networks:
    - network: sandbox-prov
  bootProfile:
    kernel: vmlinuz
    initrd: initrd.img
    cmdline: console=ttyS0 girder.marker=sandbox
YAML
  local address="" deadline=$((SECONDS + 60))
  until [ -n "$address" ]; do
    address="$("$kubectl" get network sandbox-prov -n "$namespace" \
      -o jsonpath='{.status.allocations[?(@.node=="pxe-vm-0")].ipv4}' 2>/dev/null || true)"
    [ $SECONDS -lt $deadline ] || { say "the operator gave pxe-vm-0 no address; see $run/operator.log"; exit 1; }
    [ -n "$address" ] || sleep 0.5
  done
  say "the operator allocated $address to pxe-vm-0"

  say "starting girder pxe on $HOST_IF (logs: $run/pxe.log)"
  mkdir -p "$run/pxe-state"
  setsid target/debug/girder pxe --namespace "$namespace" --interface "$HOST_IF" --http-addr "$SUBNET.1:8081" \
    --assets-dir "$assets" --state-dir "$run/pxe-state" --log-format text >"$run/pxe.log" 2>&1 </dev/null &
  echo $! >"$run/pxe.pid"
  deadline=$((SECONDS + 60))
  until curl -fsS "http://$SUBNET.1:8081/readyz" >/dev/null 2>&1; do
    kill -0 "$(cat "$run/pxe.pid")" 2>/dev/null || { say "girder pxe died:"; tail -n 20 "$run/pxe.log"; exit 1; }
    [ $SECONDS -lt $deadline ] || { say "girder pxe is not ready; see $run/pxe.log"; exit 1; }
    sleep 0.2
  done

  say "booting a VM ($accel; BIOS with the iPXE NIC ROM; serial console: $run/vm-serial.log)"
  ip -n "$NETNS" tuntap add dev tap0 mode tap
  ip -n "$NETNS" link set tap0 master br0
  ip -n "$NETNS" link set tap0 up
  : >"$run/vm-serial.log"
  ip netns exec "$NETNS" qemu-system-x86_64 -accel "$accel" -nodefaults -nographic -no-reboot -boot n \
    -machine pc -m 256 -serial "file:$run/vm-serial.log" \
    -netdev tap,id=net0,ifname=tap0,script=no,downscript=no \
    -device "virtio-net-pci,netdev=net0,mac=$MAC,bootindex=1" >"$run/qemu.log" 2>&1 </dev/null &
  local qemu=$! shown=0 lines
  deadline=$((SECONDS + ${GIRDER_SANDBOX_VM_TIMEOUT:-300}))
  # Shows what girder pxe did for the VM as it happens, until the VM's
  # initrd prints its line.
  while :; do
    lines="$(grep -E 'DHCP ACK|ProxyDHCP|served iPXE script|TFTP' "$run/pxe.log" | grep -v DEBUG || true)"
    if [ -n "$lines" ] && [ "$(printf '%s\n' "$lines" | wc -l)" -gt $shown ]; then
      printf '%s\n' "$lines" | tail -n +$((shown + 1)) | sed -E 's/^[^ ]+ +//; s/^/    pxe: /'
      shown="$(printf '%s\n' "$lines" | wc -l)"
    fi
    if grep -q 'GIRDER-PXE-BOOTED marker=sandbox' "$run/vm-serial.log"; then
      say "the VM booted its boot profile: $(grep -o 'GIRDER-PXE-BOOTED.*' "$run/vm-serial.log" | tr -d '\r')"
      say "PXE boot took $((SECONDS - started)) s from the start of this step"
      say "girder pxe serves on $SUBNET.1: curl http://$SUBNET.1:8081/boot/$MAC.ipxe, curl http://$SUBNET.1:8081/metrics"
      break
    fi
    if ! kill -0 "$qemu" 2>/dev/null; then
      say "QEMU ended before the VM booted; serial console:"; tail -n 20 "$run/vm-serial.log"; exit 1
    fi
    [ $SECONDS -lt $deadline ] || { say "the VM did not boot in time; see $run/pxe.log and $run/vm-serial.log"; exit 1; }
    sleep 0.5
  done
}

case "${1:-}" in
  up) up "$2" "$3" "$4" ;;
  down) down "$2" ;;
  *) echo "usage: $0 up KUBECTL NAMESPACE RUN_DIR | down RUN_DIR" >&2; exit 2 ;;
esac
