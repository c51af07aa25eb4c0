#!/usr/bin/env bash
# `make test`: everything that proves girder works, from a fresh clone.
#   lint (fmt, clippy -D warnings) -> real peers (built once, cached) ->
#   the sandbox end to end -> unit and integration tests against a real
#   kube-apiserver. The control plane is stopped on exit, whatever happens.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GIRDER_CACHE="${GIRDER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/girder}"
step() { printf '\n==> %s\n' "$*" >&2; }

step "dependencies"
e2e/deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

# girder's ramdisk builds (cargo, cached by content) while the Go tools
# below build and download: neither keeps both cores busy all the time.
step "girder's ramdisk (make ramdisk; cached in $GIRDER_CACHE/ramdisk), in the background"
ramdisk_out="$(mktemp)"
ramdisk/build.sh >"$ramdisk_out" 2>"$ramdisk_out.log" &
ramdisk_pid=$!
trap 'kill "$ramdisk_pid" 2>/dev/null || true; rm -f "$ramdisk_out" "$ramdisk_out.log"' EXIT

step "real peers: etcd, kube-apiserver, kubectl, helm, the distribution registry, toxiproxy (cached in $GIRDER_CACHE/bin)"
if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then assets="$KUBEBUILDER_ASSETS"; else assets="$(e2e/tools.sh all)"; fi
export GIRDER_KUBECTL="${GIRDER_KUBECTL:-$assets/kubectl}"
export GIRDER_HELM="${GIRDER_HELM:-$(e2e/tools.sh helm)}"
export GIRDER_REGISTRY="${GIRDER_REGISTRY:-$(e2e/tools.sh registry)}"
export GIRDER_TOXIPROXY="${GIRDER_TOXIPROXY:-$(e2e/tools.sh toxiproxy)}"
step "real peers: sushy-tools Redfish emulator (venv cached in $GIRDER_CACHE/venv)"
e2e/sushy.sh install >/dev/null
step "real peers: BIND 9 and dig/nsupdate (Debian bind9, bind9-dnsutils)"
e2e/bind.sh install
step "real peers: OpenIPMI ipmi_sim and ipmitool (Debian packages)"
e2e/ipmi.sh install >/dev/null
step "real peers: QEMU, iPXE, OVMF, dnsmasq; a test kernel and initrd (cached in $GIRDER_CACHE/pxe)"
e2e/pxe-assets.sh build >/dev/null

if [ "${USE_EXISTING_CLUSTER:-}" != "true" ]; then
  step "make sandbox, end to end, in its own control plane"
  sandbox_home="$(mktemp -d "${TMPDIR:-/tmp}/girder-sandbox.XXXXXX")"
  trap 'kill "$ramdisk_pid" 2>/dev/null || true; GIRDER_HOME="$sandbox_home" e2e/sandbox.sh down >/dev/null 2>&1 || true; rm -rf "$sandbox_home"' EXIT
  port=8000
  while ss -Hltn "sport = :$port" | grep -q .; do port=$((20000 + RANDOM % 20000)); done
  ipmi_port=9623
  while ss -Hlun "sport = :$ipmi_port" | grep -q .; do ipmi_port=$((20000 + RANDOM % 20000)); done
  GIRDER_HOME="$sandbox_home" GIRDER_SANDBOX_REDFISH_PORT="$port" GIRDER_SANDBOX_IPMI_PORT="$ipmi_port" e2e/sandbox.sh up
  GIRDER_HOME="$sandbox_home" e2e/sandbox.sh down
  rm -rf "$sandbox_home"
fi

step "girder's ramdisk (waiting for its build) and the test OS image (cached in $GIRDER_CACHE/test-image)"
# Built before the tests, not from inside them: the static agent's cargo
# build would wait on the lock of the cargo test that runs them.
if ! wait "$ramdisk_pid"; then
  cat "$ramdisk_out.log" >&2
  echo "make ramdisk failed; its output is above" >&2
  exit 1
fi
trap - EXIT
GIRDER_RAMDISK_DIR="$(cat "$ramdisk_out")"
rm -f "$ramdisk_out" "$ramdisk_out.log"
export GIRDER_RAMDISK_DIR
e2e/test-image.sh build "$GIRDER_RAMDISK_DIR" >/dev/null

step "girder's container image (make image), built twice: the same commit gives the same digest"
image_again="$(mktemp -d)"
image_digest="$(e2e/image.sh build target/image)"
again_digest="$(e2e/image.sh build "$image_again")"
rm -rf "$image_again"
if [ "$image_digest" != "$again_digest" ]; then
  echo "make image is not reproducible: $image_digest, then $again_digest" >&2
  exit 1
fi
export GIRDER_IMAGE_DIR="$PWD/target/image"

step "Argo CD health checks (e2e/argocd-health.sh: the scripts as Argo CD runs them, on real girder objects)"
e2e/argocd-health.sh test | grep -v '^ok '

step "control plane for the tests"
export GIRDER_HOME="${GIRDER_TEST_HOME:-$GIRDER_CACHE/test}"
mkdir -p "$GIRDER_HOME"
trap 'e2e/controlplane.sh down' EXIT
e2e/controlplane.sh up
[ "${USE_EXISTING_CLUSTER:-}" = "true" ] || export KUBECONFIG="$GIRDER_HOME/kubeconfig"

step "cargo test (unit, then integration against the API server)"
results="$(mktemp)"
cargo test --locked --all-targets -- --test-threads "${GIRDER_TEST_THREADS:-4}" 2>&1 | tee "$results"
e2e/controlplane.sh down
trap - EXIT
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$results"
rm -f "$results"
