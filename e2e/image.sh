#!/usr/bin/env bash
# `make image`: girder's container image, built without a container engine.
# The static `girder` binary (the same build as the ramdisk's agent), Debian's
# CA bundle and a passwd entry for its non-root user, in one layer of an OCI
# image layout (https://github.com/opencontainers/image-spec/blob/main/image-layout.md).
# Reproducible: file times, owners and order in the layer, and the image's
# creation time, come from the commit, so the same commit gives the same digest.
#
#   e2e/image.sh build [DIR]   build into DIR (default target/image); prints
#                              the manifest digest (sha256:...)
#
# Push it with skopeo (Debian), e.g.
#   skopeo copy oci:target/image:0.1.0 docker://registry.example.com/girder:0.1.0
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. e2e/lib.sh
log() { echo "image: $*" >&2; }
TMP_DIR=""
trap '[ -z "$TMP_DIR" ] || rm -rf "$TMP_DIR"' EXIT

# The user the chart's securityContext runs as (runAsUser/runAsGroup).
UID_GID=65532

# sha256 of a file, as a digest.
digest() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }
size() { stat -c %s "$1"; }

# put DIR FILE: FILE into the layout's blobs (named by its digest); prints the digest.
put() {
  local d
  d="$(digest "$2")"
  mkdir -p "$1/blobs/sha256"
  cp "$2" "$1/blobs/sha256/${d#sha256:}"
  echo "$d"
}

build() {
  local out="${1:-target/image}"
  ensure_debs ca-certificates jq
  local binary version revision epoch created source
  binary="$(build_static_girder)"
  version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
  revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
  if ! git diff --quiet HEAD 2>/dev/null; then revision="$revision-dirty"; fi
  epoch="$(git log -1 --format=%ct 2>/dev/null || echo 0)"
  created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
  source="${GIRDER_IMAGE_SOURCE:-$(git config --get remote.origin.url 2>/dev/null || echo local)}"
  TMP_DIR="$(mktemp -d)"
  local tmp="$TMP_DIR"

  local root="$tmp/root"
  mkdir -p "$root/usr/bin" "$root/etc/ssl/certs" "$root/tmp"
  install -m 0755 "$binary" "$root/usr/bin/girder"
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\ngirder:x:%s:%s:girder:/nonexistent:/sbin/nologin\n' "$UID_GID" "$UID_GID" >"$root/etc/passwd"
  printf 'root:x:0:\ngirder:x:%s:\n' "$UID_GID" >"$root/etc/group"
  chmod 0644 "$root/etc/passwd" "$root/etc/group"
  chmod 1777 "$root/tmp"
  find "$root" -type d ! -path "$root/tmp" -exec chmod 0755 {} +
  tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --format=gnu \
    -C "$root" -cf "$tmp/layer.tar" usr etc tmp
  gzip -9 -n -c "$tmp/layer.tar" >"$tmp/layer.tar.gz"

  rm -rf "$out"
  mkdir -p "$out"
  local layer config manifest labels
  layer="$(put "$out" "$tmp/layer.tar.gz")"
  labels="$(jq -n --arg source "$source" --arg version "$version" --arg revision "$revision" --arg created "$created" '{
    "org.opencontainers.image.title": "girder",
    "org.opencontainers.image.description": "girder: physical datacenter operations on Kubernetes (operator, PXE sidecar, node agent)",
    "org.opencontainers.image.source": $source,
    "org.opencontainers.image.version": $version,
    "org.opencontainers.image.revision": $revision,
    "org.opencontainers.image.created": $created
  }')"
  jq -cS -n --arg created "$created" --arg diff "$(digest "$tmp/layer.tar")" --arg user "$UID_GID:$UID_GID" --argjson labels "$labels" '{
    created: $created, architecture: "amd64", os: "linux",
    config: {User: $user, Entrypoint: ["/usr/bin/girder"], Env: ["PATH=/usr/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"], WorkingDir: "/", Labels: $labels},
    rootfs: {type: "layers", diff_ids: [$diff]},
    history: [{created: $created, created_by: "make image (e2e/image.sh)"}]
  }' | tr -d '\n' >"$tmp/config.json"
  config="$(put "$out" "$tmp/config.json")"
  jq -cS -n --arg config "$config" --argjson csize "$(size "$tmp/config.json")" \
    --arg layer "$layer" --argjson lsize "$(size "$tmp/layer.tar.gz")" --argjson labels "$labels" '{
    schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $config, size: $csize},
    layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $layer, size: $lsize}],
    annotations: $labels
  }' | tr -d '\n' >"$tmp/manifest.json"
  manifest="$(put "$out" "$tmp/manifest.json")"
  jq -cS -n --arg manifest "$manifest" --argjson size "$(size "$tmp/manifest.json")" --arg version "$version" '{
    schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
    manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $manifest, size: $size,
      platform: {architecture: "amd64", os: "linux"},
      annotations: {"org.opencontainers.image.ref.name": $version}}]
  }' | tr -d '\n' >"$out/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
  log "built $out (girder $version, $revision; layer $(du -h "$tmp/layer.tar.gz" | cut -f1)): oci:$out:$version @ $manifest"
  echo "$manifest"
}

case "${1:-build}" in
  build) build "${2:-}" ;;
  *) echo "usage: $0 build [DIR]" >&2; exit 2 ;;
esac
