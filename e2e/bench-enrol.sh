#!/usr/bin/env bash
# Benchmark: enrol N emulated machines to Available.
#
#   e2e/bench-enrol.sh N        (e.g. 100, 1000)
#
# Starts its own control plane (GIRDER_HOME=$GIRDER_CACHE/bench-enrol), one
# sushy-emulator --fake per 100 systems (sushy handles about that many per
# process), creates N BareMetalNodes with their Secret while no operator runs,
# then starts a release build of `girder operator` and measures the wall time
# until every node is Available. Prints the figures BENCHMARKS.md reports:
# wall time, status writes and BMC calls per node (from the operator's
# /metrics), and the operator's peak RSS (VmHWM). Everything it started is
# stopped on exit. Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${1:?usage: $0 NODES}"
PER_EMULATOR=100
export GIRDER_CACHE="${GIRDER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/girder}"
export GIRDER_HOME="$GIRDER_CACHE/bench-enrol"
work="$GIRDER_HOME/run"
say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for f in "$work"/sushy-*.pid; do [ -f "$f" ] && e2e/sushy.sh stop "$(cat "$f")"; done
  e2e/controlplane.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

rm -rf "$work" && mkdir -p "$work"
e2e/deps.sh
e2e/sushy.sh install >/dev/null
e2e/controlplane.sh up
export KUBECONFIG="$GIRDER_HOME/kubeconfig"
kubectl="$(e2e/controlplane.sh kubectl)"
say "building girder (release)"
cargo build --release --locked --quiet --bin girder
"$kubectl" apply --server-side -k crds/ >/dev/null
"$kubectl" wait --for condition=Established crd --all --timeout 60s >/dev/null
"$kubectl" create namespace bench >/dev/null

emulators=$(((N + PER_EMULATOR - 1) / PER_EMULATOR))
say "starting $emulators emulators for $N systems"
ports=()
for e in $(seq 0 $((emulators - 1))); do
  port=$((21000 + e))
  conf="$work/sushy-$e.conf"
  {
    echo "SUSHY_EMULATOR_STATE_DIR = '$work/sushy-$e-state'"
    echo "SUSHY_EMULATOR_FAKE_SYSTEMS = ["
    for i in $(seq $((e * PER_EMULATOR)) $((e * PER_EMULATOR + PER_EMULATOR - 1))); do
      [ "$i" -lt "$N" ] || break
      printf "  {'uuid': 'be000000-0000-4000-8000-%012d', 'name': 'm%04d', 'power_state': 'Off', 'nics': [{'mac': '52:54:%02x:%02x:%02x:%02x'}]},\n" \
        "$i" "$i" $((i >> 24 & 255)) $((i >> 16 & 255)) $((i >> 8 & 255)) $((i & 255))
    done
    echo "]"
  } >"$conf"
  e2e/sushy.sh start "$port" "$conf" "$work/sushy-$e.log" >"$work/sushy-$e.pid"
  ports+=("$port")
done
for port in "${ports[@]}"; do
  # Listing the systems makes the emulator seed its state store once, before
  # concurrent first requests could overwrite each other with the seed.
  until curl -fsS "http://127.0.0.1:$port/redfish/v1/Systems" >/dev/null 2>&1; do sleep 0.2; done
done

say "creating $N BareMetalNodes"
{
  printf 'apiVersion: v1\nkind: Secret\nmetadata: {name: bmc}\nstringData: {username: admin, password: bench}\n'
  for i in $(seq 0 $((N - 1))); do
    port=$((21000 + i / PER_EMULATOR))
    printf -- '---\napiVersion: girder.dev/v1alpha1\nkind: BareMetalNode\nmetadata: {name: m%04d}\nspec:\n  bmc: {address: "redfish+http://127.0.0.1:%d/redfish/v1/Systems/m%04d", credentialsSecretRef: {name: bmc}}\n  online: false\n' "$i" "$port" "$i"
  done
} >"$work/nodes.yaml"
created_at=$SECONDS
"$kubectl" apply --server-side -n bench -f "$work/nodes.yaml" >/dev/null
say "created in $((SECONDS - created_at)) s"

metrics_port=$((22000 + RANDOM % 1000))
say "starting the operator; timing until all $N nodes are Available"
start_ns=$(date +%s%N)
target/release/girder operator --namespace bench --lease-namespace bench --identity bench \
  --http-addr "127.0.0.1:$metrics_port" >"$work/operator.log" 2>&1 &
op=$!
pids+=("$op")
peak_kib=0
while :; do
  available=$("$kubectl" get bmn -n bench -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -cx Available || true)
  rss=$(awk '/^VmHWM/ {print $2}' "/proc/$op/status" 2>/dev/null || echo 0)
  [ "${rss:-0}" -gt "$peak_kib" ] && peak_kib=$rss
  [ "$available" -ge "$N" ] && break
  kill -0 "$op" 2>/dev/null || { say "the operator died:"; tail -n 20 "$work/operator.log" >&2; exit 1; }
  sleep 1
done
elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
metrics="$(curl -fsS "http://127.0.0.1:$metrics_port/metrics")"
sum() { printf '%s\n' "$metrics" | awk -v p="$1" 'index($0, p) == 1 {s += $NF} END {printf "%d", s}'; }
writes=$(sum 'girder_status_writes_total{kind="BareMetalNode"}')
all_writes=$(sum 'girder_status_writes_total')
calls=$(sum 'girder_bmc_calls_total')
rss_final=$(awk '/^VmHWM/ {print $2}' "/proc/$op/status")
[ "$rss_final" -gt "$peak_kib" ] && peak_kib=$rss_final
awk -v n="$N" -v ms="$elapsed_ms" -v w="$writes" -v aw="$all_writes" -v c="$calls" -v kib="$peak_kib" 'BEGIN {
  printf "nodes=%d wall=%.1fs node_status_writes_per_node=%.2f all_status_writes_per_node=%.2f bmc_calls_per_node=%.2f peak_rss=%.1fMiB\n",
    n, ms / 1000, w / n, aw / n, c / n, kib / 1024 }'
