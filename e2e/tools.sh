#!/usr/bin/env bash
# Builds (once) and caches the real peers the tests and the sandbox use:
# etcd, kube-apiserver, kubectl and helm, from their Go modules at pinned
# releases. Binaries land in $GIRDER_CACHE/bin/<name>-<version>; a second run
# finds them there and builds nothing. `all` prints the directory of stable
# names (etcd, kube-apiserver, kubectl, helm); `helm` prints the helm binary,
# `registry` the distribution registry's, `toxiproxy` Shopify's fault-injecting
# TCP proxy's (the BMC fault tests put it between girder and its BMCs).
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
REGISTRY_VERSION="${REGISTRY_VERSION:-v3.1.2}"
TOXIPROXY_VERSION="${TOXIPROXY_VERSION:-v2.12.0}"
GIRDER_CACHE="${GIRDER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/girder}"
BIN="$GIRDER_CACHE/bin"
WORK="$GIRDER_CACHE/build"
mkdir -p "$BIN" "$WORK"

log() { echo "tools: $*" >&2; }

need_go() {
  command -v go >/dev/null || { log "Go is required to build the control plane (apt-get install golang or see README)"; exit 1; }
}

# k8s.io/kubernetes replaces every k8s.io/* staging module with a local path,
# so it cannot be required as is: this wrapper module requires it and points
# each staging module at the release with the same minor (v1.37.2 -> v0.37.2).
build_kubernetes() {
  local want=()
  [ -x "$BIN/kube-apiserver-$K8S_VERSION" ] || want+=(kube-apiserver)
  [ -x "$BIN/kubectl-$K8S_VERSION" ] || want+=(kubectl)
  [ ${#want[@]} -eq 0 ] && return
  need_go
  local dir="$WORK/kubernetes-$K8S_VERSION"
  local staging="v0.${K8S_VERSION#v1.}"
  mkdir -p "$dir"
  log "building ${want[*]} $K8S_VERSION (first run only; takes several minutes)"
  (
    cd "$dir"
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
    {
      echo "module girder.dev/tools/kubernetes"
      echo
      sed -n 's/^go \([0-9.]*\)$/go \1/p' "$gomod" | head -n1
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      grep -E '^[[:space:]]*k8s.io/[a-z0-9-]+ => \./staging/' "$gomod" |
        awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
    } >go.mod
    cat >tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    go mod tidy >&2
    for cmd in "${want[@]}"; do
      CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" \
        -o "$BIN/$cmd-$K8S_VERSION.tmp" "k8s.io/kubernetes/cmd/$cmd" >&2
      mv "$BIN/$cmd-$K8S_VERSION.tmp" "$BIN/$cmd-$K8S_VERSION"
    done
  )
}

# etcd's own main package lives in a module with replace directives too; its
# whole body is etcdmain.Main, which the server module exports.
build_etcd() {
  [ -x "$BIN/etcd-$ETCD_VERSION" ] && return
  need_go
  local dir="$WORK/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  log "building etcd $ETCD_VERSION (first run only)"
  (
    cd "$dir"
    cat >go.mod <<GO
module girder.dev/tools/etcd

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GO
    cat >main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go mod tidy >&2
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/etcd-$ETCD_VERSION.tmp" . >&2
    mv "$BIN/etcd-$ETCD_VERSION.tmp" "$BIN/etcd-$ETCD_VERSION"
  )
}

# Helm's own release build stamps the Kubernetes version `helm template` and
# `helm lint` assume when no cluster is asked; without it they assume 1.20.
HELM_K8S_MINOR="${K8S_VERSION#v1.}"; HELM_K8S_MINOR="${HELM_K8S_MINOR%%.*}"
HELM_BIN="helm-$HELM_VERSION-k8s1.$HELM_K8S_MINOR"

build_helm() {
  [ -x "$BIN/$HELM_BIN" ] && return
  need_go
  local dir="$WORK/helm-$HELM_VERSION"
  mkdir -p "$dir"
  log "building helm $HELM_VERSION (first run only)"
  (
    cd "$dir"
    local stamp=""
    for pkg in pkg/chartutil pkg/lint/rules; do
      stamp+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$HELM_K8S_MINOR"
    done
    GOBIN="$dir" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION$stamp" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
    mv "$dir/helm" "$BIN/$HELM_BIN"
  )
}

# go_tool NAME VERSION PACKAGE: builds PACKAGE@VERSION (a main package) once
# into $BIN/NAME-VERSION.
go_tool() {
  local name="$1" version="$2" package="$3" dir
  [ -x "$BIN/$name-$version" ] && return
  need_go
  dir="$WORK/$name-$version"
  mkdir -p "$dir"
  log "building $name $version (first run only)"
  GOBIN="$dir" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "$package@$version" >&2
  mv "$dir/$(basename "$package")" "$BIN/$name-$version"
}

# The CNCF distribution registry, where the image tests push girder's image.
build_registry() {
  go_tool registry "$REGISTRY_VERSION" github.com/distribution/distribution/v3/cmd/registry
}

# Shopify's toxiproxy: a TCP proxy whose faults (latency, a peer that stops
# answering, resets, answers cut short) are set through its HTTP API.
build_toxiproxy() {
  go_tool toxiproxy "$TOXIPROXY_VERSION" github.com/Shopify/toxiproxy/v2/cmd/server
}

# Stable names in one directory, so KUBEBUILDER_ASSETS and PATH can point at it.
link_assets() {
  local assets="$GIRDER_CACHE/assets"
  mkdir -p "$assets"
  ln -sfn "$BIN/etcd-$ETCD_VERSION" "$assets/etcd"
  ln -sfn "$BIN/kube-apiserver-$K8S_VERSION" "$assets/kube-apiserver"
  ln -sfn "$BIN/kubectl-$K8S_VERSION" "$assets/kubectl"
  ln -sfn "$BIN/$HELM_BIN" "$assets/helm"
  echo "$assets"
}

case "${1:-all}" in
  all) build_etcd; build_kubernetes; build_helm; link_assets ;;
  etcd) build_etcd ;;
  kubernetes) build_kubernetes ;;
  helm) build_helm; echo "$BIN/$HELM_BIN" ;;
  registry) build_registry; echo "$BIN/registry-$REGISTRY_VERSION" ;;
  toxiproxy) build_toxiproxy; echo "$BIN/toxiproxy-$TOXIPROXY_VERSION" ;;
  *) echo "usage: $0 [all|etcd|kubernetes|helm|registry|toxiproxy]" >&2; exit 2 ;;
esac
