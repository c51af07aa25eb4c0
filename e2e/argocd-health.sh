#!/usr/bin/env bash
# girder's Argo CD health checks (charts/girder/argocd/<group>/<kind>/health.lua,
# Argo CD's resource_customizations layout) run as Argo CD runs a script from
# argocd-cm, by e2e/argocd-health (gopher-lua at the version Argo CD pins; see
# its main.go), against fixtures of real girder objects.
#
#   e2e/argocd-health.sh test        every health_test.yaml, and the argocd-cm
#                                    patch (charts/girder/argocd/argocd-cm.yaml)
#                                    up to date with the scripts (make test)
#   e2e/argocd-health.sh configmap   print that patch (regenerate it with
#                                    > charts/girder/argocd/argocd-cm.yaml)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
GIRDER_CACHE="${GIRDER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/girder}"
dir=charts/girder/argocd

key="$(cat e2e/argocd-health/main.go e2e/argocd-health/go.mod e2e/argocd-health/go.sum | sha256sum | cut -c1-12)"
bin="$GIRDER_CACHE/bin/argocd-health-$key"
if [ ! -x "$bin" ]; then
  command -v go >/dev/null || { echo "argocd-health: Go is required (apt-get install golang-go)" >&2; exit 1; }
  mkdir -p "$GIRDER_CACHE/bin"
  (cd e2e/argocd-health && CGO_ENABLED=0 go build -trimpath -o "$bin.tmp" . && mv "$bin.tmp" "$bin")
fi

case "${1:-test}" in
  test)
    "$bin" test "$dir"
    if ! diff -u "$dir/argocd-cm.yaml" <("$bin" configmap "$dir") >&2; then
      echo "argocd-health: $dir/argocd-cm.yaml is not what the scripts give; regenerate it: e2e/argocd-health.sh configmap > $dir/argocd-cm.yaml" >&2
      exit 1
    fi
    ;;
  configmap) "$bin" configmap "$dir" ;;
  *) echo "usage: $0 [test|configmap]" >&2; exit 2 ;;
esac
