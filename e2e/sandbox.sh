#!/usr/bin/env bash
# `make sandbox`: girder on one machine. Starts the local control plane,
# installs the CRDs, runs the operator, applies the sample lab, and shows the
# Workload's plan and conditions as they settle. Everything stays running
# afterwards; `make sandbox-down` stops it.
#
#   e2e/sandbox.sh up | down
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
GIRDER_CACHE="${GIRDER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/girder}"
export GIRDER_HOME="${GIRDER_HOME:-$GIRDER_CACHE}"
run="$GIRDER_HOME/sandbox"
NAMESPACE="${GIRDER_SANDBOX_NAMESPACE:-girder-lab}"
say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }

alive() { [ -f "$run/operator.pid" ] && kill -0 "$(cat "$run/operator.pid")" 2>/dev/null; }

down() {
  if alive; then
    local pid; pid="$(cat "$run/operator.pid")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$run/operator.pid"
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
    if "$kubectl" get workload lab-k8s -n "$NAMESPACE" -o jsonpath='{.status.conditions[?(@.type=="Blocked")].status}' 2>/dev/null | grep -qx False &&
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
  say "building girder"
  cargo build --locked --quiet --bin girder
  say "installing the CRDs"
  "$kubectl" apply --server-side -k crds/ >/dev/null
  "$kubectl" wait --for condition=Established crd --all --timeout 60s >/dev/null
  "$kubectl" create namespace girder-system --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
  if ! alive; then
    say "starting the operator (logs: $run/operator.log)"
    setsid target/debug/girder operator --lease-namespace girder-system --identity sandbox \
      --http-addr "127.0.0.1:${GIRDER_SANDBOX_HTTP_PORT:-0}" --log-format text \
      >"$run/operator.log" 2>&1 </dev/null &
    echo $! >"$run/operator.pid"
  fi
  say "applying the sample lab (config/samples) to namespace $NAMESPACE"
  "$kubectl" create namespace "$NAMESPACE" --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
  "$kubectl" apply -k config/samples -n "$NAMESPACE" | sed 's/^/    /'
  watch_progress "$kubectl"
  say "the plan of workload lab-k8s (roles run layer by layer; a sync layer waits for every node):"
  "$kubectl" get workload lab-k8s -n "$NAMESPACE" \
    -o jsonpath='{range .status.plan[*]}    layer {.layer}: {.roles}{"  sync="}{.barrier}{"\n"}{end}'
  "$kubectl" get workload lab-k8s -n "$NAMESPACE" \
    -o jsonpath='{range .status.conditions[*]}    {.type}={.status} ({.reason}): {.message}{"\n"}{end}'
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
