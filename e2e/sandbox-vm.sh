#!/usr/bin/env bash
# The optional part of `make sandbox` (GIRDER_SANDBOX_VM=1): one QEMU machine,
# behind a real IPMI BMC emulator, goes from power-off to an installed system
# booted from its disk, the way a server in a rack does.
#
# A network namespace `girder-sandbox` holds a bridge and the machine's tap;
# its veth peer `gp-sandbox` (10.199.0.1/24, host side) is where girder pxe
# answers DHCP, TFTP and HTTP and passes agents' TCP through to the API
# server (10.199.0.1:16443). OpenIPMI's ipmi_sim on UDP 127.0.0.1:9624
# (GIRDER_SANDBOX_VM_IPMI_PORT) powers the machine through e2e/vm.sh. The
# BareMetalNode `vm-0` (Network `sandbox-prov`, Managed DHCP) names the
# BMC, a user-data Secret and the test OS image (e2e/test-image.sh), so the
# operator registers it, inspects it from inside (girder's ramdisk; IPMI has
# no inventory), installs the image, and boots the disk; the installed
# system prints its user-data marker and its own agent reports. Needs root
# (namespaces, taps, ports 67/69). The first run builds girder's ramdisk
# (`make ramdisk`, about 10 minutes); later runs reuse it.
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
NODE=vm-0
IPMI_PORT="${GIRDER_SANDBOX_VM_IPMI_PORT:-9624}"
PASSTHROUGH_PORT=16443

down() {
  local run="$1"
  if [ -f "$run/vm-ipmi.pid" ]; then e2e/ipmi.sh stop "$(cat "$run/vm-ipmi.pid")" || true; rm -f "$run/vm-ipmi.pid"; fi
  if [ -f "$run/vm/config" ]; then e2e/vm.sh chassis "$run/vm" set power 0 >/dev/null 2>&1 || true; fi
  if [ -f "$run/pxe.pid" ]; then stop_process "$(cat "$run/pxe.pid")"; rm -f "$run/pxe.pid"; fi
  if ip netns list | grep -qw "$NETNS"; then
    local pid
    for pid in $(ip netns pids "$NETNS" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns delete "$NETNS" 2>/dev/null || true
  fi
  ip link delete "$HOST_IF" 2>/dev/null || true
}

# One line whenever the node's phase, provisioning state, power or agent
# connection changes, and girder pxe's part as it happens, until the node is
# Provisioned and the installed system has spoken.
watch_machine() {
  local kubectl="$1" namespace="$2" run="$3" deadline=$((SECONDS + ${GIRDER_SANDBOX_VM_TIMEOUT:-900}))
  local last="" now shown=0 lines
  while :; do
    now="$("$kubectl" get bmn "$NODE" -n "$namespace" -o jsonpath='{.status.phase} {.status.provisioning.state} power={.status.powerState} agent={.status.conditions[?(@.type=="AgentConnected")].status} {.status.agent.bootSource} {.status.agent.run.step}' 2>/dev/null || true)"
    if [ "$now" != "$last" ]; then say "$NODE: $now"; last="$now"; fi
    lines="$(grep -E 'DHCP ACK|served iPXE script|issued an agent token|refus' "$run/pxe.log" | grep -v DEBUG || true)"
    if [ -n "$lines" ] && [ "$(printf '%s\n' "$lines" | wc -l)" -gt $shown ]; then
      printf '%s\n' "$lines" | tail -n +$((shown + 1)) | sed -E 's/^[^ ]+ +//; s/^/    pxe: /'
      shown="$(printf '%s\n' "$lines" | wc -l)"
    fi
    if [[ "$now" == Provisioned* ]] && grep -q 'GIRDER-INSTALLED' "$run/vm/serial.log" 2>/dev/null; then
      say "the installed system booted from its disk: $(grep -o 'GIRDER-INSTALLED.*' "$run/vm/serial.log" | tail -n1 | tr -d '\r')"
      return 0
    fi
    if [ $SECONDS -ge $deadline ]; then
      say "$NODE did not get installed in time; see $run/operator.log, $run/pxe.log and $run/vm/serial.log"
      "$kubectl" get bmn "$NODE" -n "$namespace" -o jsonpath='{range .status.conditions[*]}    {.type}={.status} ({.reason}): {.message}{"\n"}{end}'
      return 1
    fi
    sleep 1
  done
}

up() {
  local kubectl="$1" namespace="$2" run="$3" started=$SECONDS
  [ "$(id -u)" -eq 0 ] || { say "GIRDER_SANDBOX_VM=1 needs root (network namespaces, taps, ports 67 and 69)"; exit 1; }
  local ramdisk image accel digest
  say "girder's ramdisk and the test OS image (the first run builds them: about 10 minutes)"
  ramdisk="$(ramdisk/build.sh)"
  image="$(e2e/test-image.sh build "$ramdisk")"
  accel="$(e2e/pxe-assets.sh accel)"
  digest="$(awk '$2 == "disk.img" || $2 == "*disk.img" {print $1}' "$image/SHA256SUMS")"
  down "$run"
  # A fresh machine: an old serial console would show an old install.
  rm -rf "$run/vm" "$run/vm-ipmi" "$run/vm-assets"
  mkdir -p "$run/vm-assets" "$run/vm"
  local file
  for file in "$ramdisk/vmlinuz" "$ramdisk/initrd.img" "$image/disk.img"; do
    ln -f "$file" "$run/vm-assets/" 2>/dev/null || cp -f "$file" "$run/vm-assets/"
  done
  if ip -o -4 addr show | grep -q " inet $SUBNET\."; then
    say "$SUBNET.0/24 is in use on this host; the sandbox VM needs it"; exit 1
  fi
  if ss -Hlun "sport = :$IPMI_PORT" | grep -q .; then
    say "UDP port $IPMI_PORT is taken; set GIRDER_SANDBOX_VM_IPMI_PORT"; exit 1
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
  ip -n "$NETNS" tuntap add dev tap0 mode tap
  ip -n "$NETNS" link set tap0 master br0
  ip -n "$NETNS" link set tap0 up

  say "the machine: QEMU ($accel, BIOS, 768 MiB, one 5 GiB disk; serial console $run/vm/serial.log), powered off"
  truncate -s 5G "$run/vm/disk0.raw"
  cat >"$run/vm/config" <<CONFIG
NETNS=$NETNS
TAP=tap0
MAC=$MAC
ACCEL=$accel
MEMORY=768
DISKS="DISK-0:$run/vm/disk0.raw"
BOOT_DISK=DISK-0
CONFIG
  mkdir -p "$run/vm-ipmi"
  echo "$PWD/e2e/vm.sh chassis $run/vm" >"$run/vm-ipmi/chassis_control"
  say "its BMC: ipmi_sim on 127.0.0.1:$IPMI_PORT/udp (logs: $run/vm-ipmi/sim.log)"
  printf 'password-for-vm\n' | e2e/ipmi.sh start "$IPMI_PORT" "$run/vm-ipmi" admin >"$run/vm-ipmi.pid"

  say "starting girder pxe on $HOST_IF, serving the ramdisk and the image (logs: $run/pxe.log)"
  mkdir -p "$run/pxe-state"
  setsid target/debug/girder pxe --namespace "$namespace" --interface "$HOST_IF" --http-addr "$SUBNET.1:8081" \
    --assets-dir "$run/vm-assets" --state-dir "$run/pxe-state" --log-format text \
    --discovery-kernel vmlinuz --discovery-initrd initrd.img --discovery-cmdline console=ttyS0 \
    --api-passthrough-addr "$SUBNET.1:$PASSTHROUGH_PORT" >"$run/pxe.log" 2>&1 </dev/null &
  echo $! >"$run/pxe.pid"
  local deadline=$((SECONDS + 60))
  until curl -fsS "http://$SUBNET.1:8081/readyz" >/dev/null 2>&1; do
    kill -0 "$(cat "$run/pxe.pid")" 2>/dev/null || { say "girder pxe died:"; tail -n 20 "$run/pxe.log"; exit 1; }
    [ $SECONDS -lt $deadline ] || { say "girder pxe is not ready; see $run/pxe.log"; exit 1; }
    sleep 0.2
  done

  say "applying the agents' admission policies, Network sandbox-prov and BareMetalNode $NODE (an image to install)"
  "$kubectl" apply -f config/rbac/agent_policy.yaml | sed 's/^/    /'
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
apiVersion: v1
kind: Secret
metadata:
  name: $NODE-bmc
stringData:
  username: admin
  password: password-for-vm
---
apiVersion: v1
kind: Secret
metadata:
  name: $NODE-user-data
stringData:
  userData: |
    #cloud-config
    girder-test-marker: sandbox
---
apiVersion: girder.dev/v1alpha1
kind: BareMetalNode
metadata:
  name: $NODE
spec:
  bmc:
    address: ipmi://127.0.0.1:$IPMI_PORT
    credentialsSecretRef: {name: $NODE-bmc}
  bootMACAddress: "$MAC"
  bootMode: Legacy
  online: true
  networks:
    - {network: sandbox-prov, interface: eth0}
  userData: {name: $NODE-user-data}
  image:
    url: http://$SUBNET.1:8081/assets/disk.img
    checksum: $digest
    format: raw
YAML
  watch_machine "$kubectl" "$namespace" "$run"
  say "$NODE installed $((SECONDS - started)) s after the start of this step; how long each step took:"
  "$kubectl" get bmn "$NODE" -n "$namespace" \
    -o jsonpath='{range .status.provisioning.steps[*]}    {.name}: {.milliseconds} ms{"\n"}{end}'
  say "try: kubectl get bmn $NODE -n $namespace -o yaml; remove spec.image to clean its disk (Deprovisioning)"
}

case "${1:-}" in
  up) up "$2" "$3" "$4" ;;
  down) down "$2" ;;
  *) echo "usage: $0 up KUBECTL NAMESPACE RUN_DIR | down RUN_DIR" >&2; exit 2 ;;
esac
