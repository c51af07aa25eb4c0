#!/usr/bin/env bash
# A real local Kubernetes control plane: etcd and kube-apiserver on loopback,
# with TLS, an admin client certificate and a service-account signing key.
#
#   e2e/controlplane.sh up     start it (or reuse a running one); writes $GIRDER_HOME/kubeconfig
#   e2e/controlplane.sh down   stop it; no process is left behind
#   e2e/controlplane.sh status say whether it runs
#
# GIRDER_HOME (default ~/.cache/girder) holds its state. Envtest conventions:
# KUBEBUILDER_ASSETS names a directory with etcd, kube-apiserver and kubectl
# to use instead of building them; USE_EXISTING_CLUSTER=true with KUBECONFIG
# uses that cluster and starts nothing.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GIRDER_CACHE="${GIRDER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/girder}"
GIRDER_HOME="${GIRDER_HOME:-$GIRDER_CACHE}"
state="$GIRDER_HOME/controlplane"
log() { echo "controlplane: $*" >&2; }

assets() {
  if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
    for b in etcd kube-apiserver; do
      [ -x "$KUBEBUILDER_ASSETS/$b" ] || { log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no executable $b"; exit 1; }
    done
    echo "$KUBEBUILDER_ASSETS"
  else
    "$here/tools.sh" all
  fi
}

kubectl_bin() {
  local dir; dir="$(assets)"
  if [ -x "$dir/kubectl" ]; then echo "$dir/kubectl"; else command -v kubectl; fi
}

alive() { [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }

free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 20000))
    ss -Hltn "sport = :$port" | grep -q . || { echo "$port"; return; }
  done
}

pki() {
  local pki="$state/pki"
  [ -f "$pki/admin.crt" ] && return
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=girder-local-ca" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=kube-apiserver" 2>/dev/null
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 3650 -extfile server.ext 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/CN=girder-admin/O=system:masters" 2>/dev/null
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 3650 -extfile client.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

write_kubeconfig() {
  local port="$1" pki="$state/pki"
  cat >"$GIRDER_HOME/kubeconfig.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: girder-local
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: girder-admin
  user:
    client-certificate-data: $(base64 -w0 "$pki/admin.crt")
    client-key-data: $(base64 -w0 "$pki/admin.key")
contexts:
- name: girder-local
  context: {cluster: girder-local, user: girder-admin, namespace: default}
current-context: girder-local
KC
  chmod 600 "$GIRDER_HOME/kubeconfig.tmp"
  mv "$GIRDER_HOME/kubeconfig.tmp" "$GIRDER_HOME/kubeconfig"
}

wait_ready() {
  local kubectl="$1" deadline=$((SECONDS + 180))
  until "$kubectl" --kubeconfig "$GIRDER_HOME/kubeconfig" get --raw /readyz >/dev/null 2>&1; do
    if ! alive kube-apiserver || ! alive etcd; then
      log "a component died while starting; last lines of its logs:"
      tail -n 20 "$state/etcd.log" "$state/kube-apiserver.log" >&2 || true
      down; exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "kube-apiserver not ready after 180 s; see $state/kube-apiserver.log"
      down; exit 1
    fi
    sleep 0.5
  done
}

up() {
  if [ "${USE_EXISTING_CLUSTER:-}" = "true" ]; then
    [ -n "${KUBECONFIG:-}" ] || { log "USE_EXISTING_CLUSTER=true needs KUBECONFIG"; exit 1; }
    log "using the existing cluster in $KUBECONFIG"
    return
  fi
  mkdir -p "$state"
  local dir kubectl
  dir="$(assets)"
  kubectl="$(kubectl_bin)"
  if alive etcd && alive kube-apiserver; then
    wait_ready "$kubectl"
    log "already running; kubeconfig: $GIRDER_HOME/kubeconfig"
    return
  fi
  down >/dev/null 2>&1 || true
  pki
  local etcd_port peer_port api_port
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  rm -rf "$state/etcd-data"
  # setsid: the components outlive this script, in their own session, so a
  # terminal's Ctrl-C on a later command does not reach them.
  setsid "$dir/etcd" --name girder --data-dir "$state/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "girder=http://127.0.0.1:$peer_port" --unsafe-no-fsync --log-level warn \
    >"$state/etcd.log" 2>&1 </dev/null &
  echo $! >"$state/etcd.pid"
  local pki="$state/pki"
  setsid "$dir/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --cert-dir "$pki" --tls-cert-file "$pki/server.crt" --tls-private-key-file "$pki/server.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --authorization-mode RBAC --service-cluster-ip-range 10.0.0.0/24 --endpoint-reconciler-type none \
    --disable-admission-plugins ServiceAccount --allow-privileged=true \
    >"$state/kube-apiserver.log" 2>&1 </dev/null &
  echo $! >"$state/kube-apiserver.pid"
  write_kubeconfig "$api_port"
  wait_ready "$kubectl"
  log "ready at https://127.0.0.1:$api_port; export KUBECONFIG=$GIRDER_HOME/kubeconfig"
}

stop() {
  local name="$1" pid
  [ -f "$state/$name.pid" ] || return 0
  pid="$(cat "$state/$name.pid")"
  stop_process "$pid" 20
  rm -f "$state/$name.pid"
}

down() {
  [ "${USE_EXISTING_CLUSTER:-}" = "true" ] && return
  stop kube-apiserver
  stop etcd
  log "stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if alive etcd && alive kube-apiserver; then echo running; else echo stopped; exit 1; fi ;;
  kubectl) kubectl_bin ;;
  *) echo "usage: $0 up|down|status|kubectl" >&2; exit 2 ;;
esac
