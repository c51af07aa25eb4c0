# girder: the two commands are `make sandbox` and `make test`.
# GIRDER_HOME (default ~/.cache/girder) holds the local control plane's state
# and kubeconfig; built peers are cached in ~/.cache/girder/bin by version.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: sandbox sandbox-down test controlplane controlplane-down tools crds lint build fuzz ramdisk image

## Everything on one machine: control plane, operator, sample lab, live progress.
sandbox:
	e2e/sandbox.sh up

sandbox-down:
	e2e/sandbox.sh down

## Lint, sandbox end to end, unit and integration tests against a real API server.
test:
	e2e/test.sh

## A local etcd + kube-apiserver; kubeconfig in $$GIRDER_HOME/kubeconfig.
controlplane:
	e2e/controlplane.sh up

controlplane-down:
	e2e/controlplane.sh down

## Build (once) etcd, kube-apiserver, kubectl and helm from their Go modules.
tools:
	e2e/tools.sh all

## Regenerate crds/ and the chart's crds/ from the Rust types.
crds:
	$(CARGO) run --quiet --bin girder -- crdgen --out-dir crds --out-dir charts/girder/crds

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

build:
	$(CARGO) build --release --bin girder

## The discovery/deploy ramdisk (Debian kernel, busybox, static `girder agent`); prints its directory.
ramdisk:
	@ramdisk/build.sh

## girder's OCI image (static binary, non-root, reproducible) in target/image; prints its digest.
image:
	@e2e/image.sh build

## Fuzz the DHCP and TFTP parsers, the DHCP decision, the Redfish model and the IPMI decoders, FUZZ_SECONDS (60) per target.
fuzz:
	e2e/fuzz.sh
