#!/usr/bin/env bash
# `make sandbox`: girder on one machine. Starts the local control plane,
# emulated BMCs for the sample machines (sushy-tools' Redfish emulator on
# 127.0.0.1:$GIRDER_SANDBOX_REDFISH_PORT, default 8000, and OpenIPMI's
# ipmi_sim on UDP 127.0.0.1:$GIRDER_SANDBOX_IPMI_PORT, default 9623), installs the CRDs,
# runs the operator, applies the sample lab, and shows the nodes moving from
# Registering to Available and the Workload's plan as they settle.
# With GIRDER_SANDBOX_VM=1 (as root) it then installs one QEMU machine behind
# an IPMI BMC through `girder pxe` and girder's ramdisk (e2e/sandbox-vm.sh):
# inspected from inside, an OS image written, booted from its disk.
# Everything stays running afterwards;
# `make sandbox-down` stops it.
#
#   e2e/sandbox.sh up | down
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. e2e/lib.sh
GIRDER_CACHE="${GIRDER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/girder}"
export GIRDER_HOME="${GIRDER_HOME:-$GIRDER_CACHE}"
run="$GIRDER_HOME/sandbox"
NAMESPACE="${GIRDER_SANDBOX_NAMESPACE:-girder-lab}"
say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }

REDFISH_PORT="${GIRDER_SANDBOX_REDFISH_PORT:-8000}"
REDFISH_NODES=(lab-node-0 lab-node-1 lab-node-2 lab-node-3)
IPMI_PORT="${GIRDER_SANDBOX_IPMI_PORT:-9623}"
IPMI_NODE=lab-node-4

alive() { [ -f "$run/operator.pid" ] && kill -0 "$(cat "$run/operator.pid")" 2>/dev/null; }

# The sample machines' BMCs: one emulator, one system per Redfish node, with
# the samples' MACs and credentials.
start_redfish() {
  if [ -f "$run/sushy.pid" ] && kill -0 "$(cat "$run/sushy.pid")" 2>/dev/null; then return; fi
  if ss -Hltn "sport = :$REDFISH_PORT" | grep -q .; then
    say "port $REDFISH_PORT is taken (another sandbox? make sandbox-down); set GIRDER_SANDBOX_REDFISH_PORT"; exit 1
  fi
  mkdir -p "$run/sushy"
  rm -f "$run/sushy/htpasswd"
  printf 'password-for-lab\n' | e2e/sushy.sh htpasswd "$run/sushy/htpasswd" admin
  {
    echo "SUSHY_EMULATOR_STATE_DIR = '$run/sushy/state'"
    echo "SUSHY_EMULATOR_AUTH_FILE = '$run/sushy/htpasswd'"
    echo "SUSHY_EMULATOR_FAKE_SYSTEMS = ["
    local i
    for i in "${!REDFISH_NODES[@]}"; do
      printf "  {'uuid': '1ab00000-0000-4000-8000-00000000000%d', 'name': '%s', 'power_state': 'Off', 'nics': [{'mac': '52:54:00:00:00:0%d'}]},\n" "$i" "${REDFISH_NODES[$i]}" "$i"
    done
    echo "]"
  } >"$run/sushy/emulator.conf"
  say "starting the Redfish emulator for ${REDFISH_NODES[*]} on 127.0.0.1:$REDFISH_PORT (logs: $run/sushy/emulator.log)"
  e2e/sushy.sh start "$REDFISH_PORT" "$run/sushy/emulator.conf" "$run/sushy/emulator.log" >"$run/sushy.pid"
  local deadline=$((SECONDS + 120))
  # Listing the systems also makes the emulator seed its state store once,
  # before concurrent first requests could overwrite each other with the seed.
  until curl -fsS -u admin:password-for-lab "http://127.0.0.1:$REDFISH_PORT/redfish/v1/Systems" >/dev/null 2>&1; do
    kill -0 "$(cat "$run/sushy.pid")" 2>/dev/null || { say "the emulator died:"; tail -n 20 "$run/sushy/emulator.log"; exit 1; }
    [ $SECONDS -lt $deadline ] || { say "the emulator does not answer"; exit 1; }
    sleep 0.2
  done
}

# The sample IPMI machine's BMC: OpenIPMI's ipmi_sim on UDP 127.0.0.1:$IPMI_PORT.
start_ipmi() {
  if [ -f "$run/ipmi.pid" ] && kill -0 "$(cat "$run/ipmi.pid")" 2>/dev/null; then return; fi
  mkdir -p "$run/ipmi"
  say "starting the IPMI simulator for $IPMI_NODE on 127.0.0.1:$IPMI_PORT/udp (logs: $run/ipmi/sim.log)"
  printf 'password-for-lab\n' | e2e/ipmi.sh start "$IPMI_PORT" "$run/ipmi" admin >"$run/ipmi.pid"
  local deadline=$((SECONDS + 60))
  until IPMI_PASSWORD=password-for-lab ipmitool -I lanplus -C 3 -H 127.0.0.1 -p "$IPMI_PORT" -U admin -E -N 1 -R 1 \
    chassis power status >/dev/null 2>&1; do
    kill -0 "$(cat "$run/ipmi.pid")" 2>/dev/null || { say "the IPMI simulator died:"; tail -n 20 "$run/ipmi/sim.log"; exit 1; }
    [ $SECONDS -lt $deadline ] || { say "the IPMI simulator does not answer"; exit 1; }
    sleep 0.2
  done
}

down() {
  e2e/sandbox-vm.sh down "$run"
  if alive; then stop_process "$(cat "$run/operator.pid")"; fi
  rm -f "$run/operator.pid"
  if [ -f "$run/sushy.pid" ]; then e2e/sushy.sh stop "$(cat "$run/sushy.pid")"; rm -f "$run/sushy.pid"; fi
  if [ -f "$run/ipmi.pid" ]; then e2e/ipmi.sh stop "$(cat "$run/ipmi.pid")"; rm -f "$run/ipmi.pid"; fi
  e2e/controlplane.sh down
  say "sandbox stopped"
}

# Prints the sample objects whenever what they show changes, until the
# workload is planned and every role resolved, or a deadline passes.
watch_progress() {
  local kubectl="$1" deadline=$((SECONDS + ${GIRDER_SANDBOX_TIMEOUT:-180})) last="" now
  while :; do
    now="$("$kubectl" get girder -n "$NAMESPACE" -o custom-columns='KIND:.kind,NAME:.metadata.name,PHASE-OR-SCOPE:.status.phase,READY:.status.conditions[?(@.type=="Ready")].status,BLOCKED:.status.conditions[?(@.type=="Blocked")].status,REASON:.status.conditions[?(@.type=="Blocked")].reason' 2>&1 || true)"
    if [ "$now" != "$last" ]; then
      say "objects in $NAMESPACE:"; printf '%s\n' "$now" | sed 's/^/    /'
      last="$now"
    fi
    local available
    available="$("$kubectl" get bmn "${REDFISH_NODES[@]}" "$IPMI_NODE" -n "$NAMESPACE" -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' 2>/dev/null | grep -cx Available || true)"
    if [ "$available" -eq $((${#REDFISH_NODES[@]} + 1)) ] &&
      "$kubectl" get workload lab-k8s -n "$NAMESPACE" -o jsonpath='{.status.conditions[?(@.type=="Blocked")].status}' 2>/dev/null | grep -qx False &&
      ! "$kubectl" get roles.girder.dev -n "$NAMESPACE" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -qvx True; then
      return 0
    fi
    if ! alive; then
      say "the operator died; last lines of $run/operator.log:"; tail -n 20 "$run/operator.log"; return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      say "the sample workload did not settle in time; see $run/operator.log"; return 1
    fi
    sleep 1
  done
}

up() {
  mkdir -p "$run"
  e2e/deps.sh
  say "control plane (first run builds etcd, kube-apiserver, kubectl and helm; later runs reuse them)"
  e2e/controlplane.sh up
  export KUBECONFIG="$GIRDER_HOME/kubeconfig"
  local kubectl; kubectl="$(e2e/controlplane.sh kubectl)"
  e2e/sushy.sh install >/dev/null
  e2e/ipmi.sh install >/dev/null
  start_redfish
  start_ipmi
  say "building girder"
  cargo build --locked --quiet --bin girder
  say "installing the CRDs"
  "$kubectl" apply --server-side -k crds/ >/dev/null
  "$kubectl" wait --for condition=Established crd --all --timeout 60s >/dev/null
  "$kubectl" create namespace girder-system --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
  if ! alive; then
    say "starting the operator (logs: $run/operator.log)"
    setsid target/debug/girder operator --lease-namespace girder-system --identity sandbox --power-poll-interval 10 \
      --http-addr "127.0.0.1:${GIRDER_SANDBOX_HTTP_PORT:-0}" --log-format text \
      >"$run/operator.log" 2>&1 </dev/null &
    echo $! >"$run/operator.pid"
  fi
  say "applying the sample lab (config/samples) to namespace $NAMESPACE"
  "$kubectl" create namespace "$NAMESPACE" --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
  "$kubectl" apply -k config/samples -n "$NAMESPACE" | sed 's/^/    /'
  if [ "$IPMI_PORT" != 9623 ]; then
    "$kubectl" patch bmn "$IPMI_NODE" -n "$NAMESPACE" --type merge \
      -p "{\"spec\":{\"bmc\":{\"address\":\"ipmi://127.0.0.1:$IPMI_PORT\"}}}" >/dev/null
  fi
  if [ "$REDFISH_PORT" != 8000 ]; then
    local node
    for node in "${REDFISH_NODES[@]}"; do
      "$kubectl" patch bmn "$node" -n "$NAMESPACE" --type merge \
        -p "{\"spec\":{\"bmc\":{\"address\":\"redfish+http://127.0.0.1:$REDFISH_PORT/redfish/v1/Systems/$node\"}}}" >/dev/null
    done
  fi
  watch_progress "$kubectl"
  say "the machines (phase, power, inventory read through their BMCs):"
  "$kubectl" get bmn -n "$NAMESPACE" \
    -o custom-columns='NAME:.metadata.name,PHASE:.status.phase,POWER:.status.powerState,VENDOR:.status.hardware.vendor,UUID:.status.hardware.uuid,NICS:.status.hardware.nics[*].mac,BMC:.status.conditions[?(@.type=="BMCReachable")].reason' | sed 's/^/    /'
  say "the plan of workload lab-k8s (roles run layer by layer; a sync layer waits for every node):"
  "$kubectl" get workload lab-k8s -n "$NAMESPACE" \
    -o jsonpath='{range .status.plan[*]}    layer {.layer}: {.roles}{"  sync="}{.barrier}{"\n"}{end}'
  "$kubectl" get workload lab-k8s -n "$NAMESPACE" \
    -o jsonpath='{range .status.conditions[*]}    {.type}={.status} ({.reason}): {.message}{"\n"}{end}'
  if [ "${GIRDER_SANDBOX_VM:-0}" = 1 ]; then
    e2e/sandbox-vm.sh up "$kubectl" "$NAMESPACE" "$run"
  else
    say "to also install a QEMU machine through its BMC, girder pxe and the agent (as root): GIRDER_SANDBOX_VM=1 make sandbox"
  fi
  cat <<MSG

The sandbox is running. Try:
    export KUBECONFIG=$KUBECONFIG PATH=$(dirname "$kubectl"):\$PATH
    kubectl get girder -n $NAMESPACE
    kubectl describe workload lab-k8s -n $NAMESPACE
    curl -s http://$(grep -o 'addr=[0-9.:]*' "$run/operator.log" | head -n1 | cut -d= -f2)/metrics
Stop it with: make sandbox-down
MSG
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
