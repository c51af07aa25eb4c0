#!/usr/bin/env bash
# Installs what the harness needs and the machine lacks: Debian packages
# (as root, through apt-get) and checks the toolchains. Idempotent and quiet
# when everything is there.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
log() { echo "deps: $*" >&2; }

debs=()
command -v openssl >/dev/null || debs+=(openssl)
command -v ss >/dev/null || debs+=(iproute2)
command -v setsid >/dev/null || debs+=(util-linux)
command -v curl >/dev/null || debs+=(curl)
command -v go >/dev/null || debs+=(golang-go)
# jq for the sample roles' tasks; Graphviz for `girder plan -o svg`; skopeo, umoci and runc for the
# container image's tests; the agent's disk work and its tests (partition tables, FAT, images) and the
# test image the provisioning tests install.
[ ${#debs[@]} -eq 0 ] || apt_install "${debs[@]}"
ensure_debs jq graphviz skopeo umoci runc fdisk gdisk mtools dosfstools python3-yaml qemu-utils gzip zstd busybox-static cpio syslinux syslinux-common ca-certificates
command -v cargo >/dev/null || { log "Rust is required: install it with rustup (https://rustup.rs)"; exit 1; }
for component in clippy rustfmt; do
  cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1 || { log "missing the $component component: rustup component add $component"; exit 1; }
done
