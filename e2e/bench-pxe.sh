#!/usr/bin/env bash
# Benchmark: girder's PXE sidecar (`girder pxe`) against dnsmasq and Kea on
# one veth pair: DHCP DORA exchanges per second, TFTP transfer time of an
# iPXE binary, HTTP throughput of a 100 MB asset.
#
#   e2e/bench-pxe.sh            (as root; prints the raw figures and a summary table)
#
# Topology (created here, removed on exit): a veth pair whose server end
# gb-srv (10.250.0.1/16) lives in the namespace girder-bench-srv and whose
# client end gb-cli (10.250.0.2/16) lives in the namespace girder-bench. The
# servers run in girder-bench-srv, not in the host namespace: DHCP servers of
# other runs on this host (the PXE lab binds 0.0.0.0%<if>:67) make Kea's
# port-67 socket fail to bind, and a namespace of its own keeps every packet
# of the benchmark on the veth. girder needs a Kubernetes API, so the control
# plane (GIRDER_HOME=$GIRDER_CACHE/bench-pxe) runs in girder-bench-srv too, on
# that namespace's loopback.
#
# DHCP: perfdhcp (Kea's load generator) in girder-bench acts as a relay agent
# (giaddr 10.250.0.2, source port 67) and runs DORA at fixed rates for
# PERIOD seconds, with RANGE distinct random client MACs, against one server
# at a time; every (server, rate) point starts the server afresh with an
# empty lease store. A server's sweep stops after the first rate with more
# than 20 % drops. Servers: girder pxe (Managed, discovery range), dnsmasq
# (lease file, and --leasefile-ro), kea-dhcp4 (memfile, persist, 2 threads).
# The pool is the same for all: 10.250.1.0 - 10.250.255.254.
#
# TFTP: curl (blksize 1468; curl has no windowsize option) fetches
# /usr/lib/ipxe/ipxe.efi REPS times from girder and from dnsmasq, alternating;
# median and fastest. A small client inline below (python3) asks both for
# windowsize 8 too (dnsmasq ignores it and answers lock-step).
#
# HTTP: curl fetches a 100 MB file from girder's /assets/ and the same file
# from busybox httpd (sendfile) over the same veth, alternating; median and
# fastest of REPS_HTTP.
#
#   e2e/bench-pxe.sh image      (only this part)
#
# Image: the agent's image writer (`girder write-image`: the code `girder
# agent` runs to install an image) against `curl URL | dd of=... bs=1M
# conv=fsync`, which neither hashes nor converts, on the same path: a
# IMAGE_MIB (1024) MiB disk of random bytes (no holes to gain from) and its
# qcow2 conversion from girder pxe's /assets/ over the veth, written from the
# client namespace to a file under IMAGE_DIR (default /var/tmp: a disk) and to
# one in /dev/shm; raw with sha256, qcow2 with sha256; REPS_IMAGE (3) runs of
# each, alternating, median. curl to /dev/null gives the path's ceiling.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. e2e/lib.sh

PART="${1:-pxe}"
case "$PART" in pxe | image) ;; *) echo "usage: $0 [pxe|image]" >&2; exit 2 ;; esac
RATES="${RATES:-250 500 1000 2000 5000 10000 15000 20000}"
PERIOD="${PERIOD:-10}"
RANGE="${RANGE:-60000}"
REPS="${REPS:-20}"
REPS_HTTP="${REPS_HTTP:-5}"
IMAGE_MIB="${IMAGE_MIB:-1024}"
IMAGE_DIR="${IMAGE_DIR:-/var/tmp}"
REPS_IMAGE="${REPS_IMAGE:-3}"
HTTP_PORT=18081
SRV=girder-bench-srv
CLI=girder-bench
export GIRDER_CACHE="${GIRDER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/girder}"
export GIRDER_HOME="$GIRDER_CACHE/bench-pxe"
work="$GIRDER_HOME/run"
say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
in_srv() { ip netns exec "$SRV" "$@"; }
# Background servers start through this array, not the function: $! is then
# the server itself (ip netns exec execs it), which stop_process can stop.
srv=(ip netns exec "$SRV")
in_cli() { ip netns exec "$CLI" "$@"; }

[ "$(id -u)" -eq 0 ] || { echo "run as root: the benchmark creates network namespaces" >&2; exit 1; }
missing=()
command -v perfdhcp >/dev/null || missing+=(kea-admin)
command -v kea-dhcp4 >/dev/null || missing+=(kea-dhcp4-server)
command -v dnsmasq >/dev/null || missing+=(dnsmasq-base)
command -v curl >/dev/null || missing+=(curl)
[ -f /usr/lib/ipxe/ipxe.efi ] || missing+=(ipxe)
command -v ip >/dev/null || missing+=(iproute2)
command -v busybox >/dev/null || missing+=(busybox)
command -v qemu-img >/dev/null || missing+=(qemu-utils)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

server_pid=""
extra_pids=()
extra_dirs=()
stop_server() {
  [ -n "$server_pid" ] || return 0
  stop_process "$server_pid" 10
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
cleanup() {
  stop_server
  for pid in "${extra_pids[@]}"; do stop_process "$pid"; done
  for dir in "${extra_dirs[@]}"; do rm -rf "$dir"; done
  in_srv env GIRDER_HOME="$GIRDER_HOME" e2e/controlplane.sh down >/dev/null 2>&1 || true
  ip netns del "$CLI" 2>/dev/null || true
  ip netns del "$SRV" 2>/dev/null || true
}
trap cleanup EXIT

rm -rf "$work" && mkdir -p "$work"
ip netns del "$CLI" 2>/dev/null || true
ip netns del "$SRV" 2>/dev/null || true
ip netns add "$SRV"
ip netns add "$CLI"
ip link add gb-srv netns "$SRV" type veth peer name gb-cli netns "$CLI"
in_srv ip addr add 10.250.0.1/16 dev gb-srv
in_cli ip addr add 10.250.0.2/16 dev gb-cli
for ns in "$SRV" "$CLI"; do ip -n "$ns" link set lo up; done
in_srv ip link set gb-srv up
in_cli ip link set gb-cli up

say "building girder (release)"
cargo build --release --locked --quiet --bin girder
e2e/tools.sh all >/dev/null
in_srv env GIRDER_HOME="$GIRDER_HOME" e2e/controlplane.sh up
export KUBECONFIG="$GIRDER_HOME/kubeconfig"
kubectl() { in_srv "$GIRDER_CACHE/assets/kubectl" "$@"; }
kubectl apply --server-side -k crds/ >/dev/null
kubectl wait --for condition=Established crd --all --timeout 60s >/dev/null
kubectl apply --server-side -f - >/dev/null <<'YAML'
apiVersion: girder.dev/v1alpha1
kind: Network
metadata: {name: bench, namespace: default}
spec:
  cidr: 10.250.0.0/16
  ranges:
    - {name: disc, type: discovery, start: 10.250.1.0, end: 10.250.255.254}
  dhcp: {mode: Managed, allowDiscovery: true, leaseSeconds: 3600}
YAML

mkdir -p "$work/assets" "$work/www"

# ---- servers -------------------------------------------------------------
# start_girder / start_dnsmasq [EXTRA...] / start_kea: one fresh server with an
# empty lease store, in the server namespace; sets server_pid.
start_girder() {
  rm -rf "$work/girder-state" && mkdir -p "$work/girder-state"
  "${srv[@]}" target/release/girder pxe --namespace default --interface gb-srv \
    --http-addr "10.250.0.1:$HTTP_PORT" --tftp-port 69 --ipxe-dir /usr/lib/ipxe \
    --assets-dir "$work/assets" --state-dir "$work/girder-state" --log-format json \
    >"$work/girder.log" 2>&1 &
  server_pid=$!
  local deadline=$((SECONDS + 60))
  until in_srv curl -fsS "http://10.250.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1; do
    kill -0 "$server_pid" 2>/dev/null || { say "girder pxe died:"; tail -n 20 "$work/girder.log" >&2; exit 1; }
    [ $SECONDS -lt $deadline ] || { say "girder pxe not ready after 60 s"; exit 1; }
    sleep 0.2
  done
}
start_dnsmasq() {
  rm -f "$work/dnsmasq.leases"
  "${srv[@]}" dnsmasq --no-daemon --conf-file=/dev/null --pid-file= --port=0 --interface=gb-srv --bind-interfaces \
    --dhcp-range=10.250.1.0,10.250.255.254,255.255.0.0,1h --dhcp-leasefile="$work/dnsmasq.leases" \
    --dhcp-lease-max=200000 --no-ping --quiet-dhcp --log-facility="$work/dnsmasq.log" "$@" \
    >"$work/dnsmasq.out" 2>&1 &
  server_pid=$!
  sleep 1
}
start_kea() {
  rm -f "$work"/kea-leases4.csv*
  cat >"$work/kea.json" <<JSON
{
  "Dhcp4": {
    "interfaces-config": { "interfaces": ["gb-srv"], "dhcp-socket-type": "raw" },
    "lease-database": { "type": "memfile", "persist": true, "name": "$work/kea-leases4.csv", "lfc-interval": 0 },
    "multi-threading": { "enable-multi-threading": true, "thread-pool-size": 2, "packet-queue-size": 64 },
    "valid-lifetime": 3600,
    "subnet4": [ { "id": 1, "subnet": "10.250.0.0/16", "pools": [ { "pool": "10.250.1.0 - 10.250.255.254" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "output_options": [ { "output": "$work/kea.log" } ], "severity": "WARN" } ]
  }
}
JSON
  KEA_PIDFILE_DIR="$work" KEA_LOCKFILE_DIR="$work" "${srv[@]}" kea-dhcp4 -c "$work/kea.json" >"$work/kea.out" 2>&1 &
  server_pid=$!
  sleep 2
  if grep -q OPEN_SOCKET_FAIL "$work/kea.log" 2>/dev/null; then say "kea-dhcp4 cannot open its socket:"; cat "$work/kea.log" >&2; exit 1; fi
}

# ---- image --------------------------------------------------------------
if [ "$PART" = image ]; then
  say "image: $IMAGE_MIB MiB of random bytes, and its qcow2"
  dd if=/dev/urandom of="$work/assets/disk.img" bs=1M count="$IMAGE_MIB" status=none
  qemu-img convert -f raw -O qcow2 "$work/assets/disk.img" "$work/assets/disk.qcow2"
  raw_sum=$(sha256sum "$work/assets/disk.img" | cut -d' ' -f1)
  qcow2_sum=$(sha256sum "$work/assets/disk.qcow2" | cut -d' ' -f1)
  start_girder
  base="http://10.250.0.1:$HTTP_PORT/assets"
  # timed FILE COMMAND...: runs COMMAND in the client namespace, appends its
  # seconds to FILE.
  timed() {
    local file="$1" t0; shift
    t0=$EPOCHREALTIME
    in_cli "$@" >>"$work/image-out.txt"
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.6f\n", b - a}' >>"$file"
  }
  : >"$work/image-out.txt"
  for where in disk tmpfs; do
    if [ "$where" = disk ]; then dir="$IMAGE_DIR/girder-bench-image.$$"; else dir="/dev/shm/girder-bench-image.$$"; fi
    mkdir -p "$dir"
    extra_dirs+=("$dir")
    for kind in ceiling dd raw qcow2; do : >"$work/image-$where-$kind.txt"; done
    say "image: $REPS_IMAGE runs of each writer to a file on $where ($dir)"
    for i in $(seq "$REPS_IMAGE"); do
      timed "$work/image-$where-ceiling.txt" curl -fsS -o /dev/null "$base/disk.img"
      rm -f "$dir/target"
      timed "$work/image-$where-dd.txt" sh -c "curl -fsS '$base/disk.img' | dd of='$dir/target' bs=1M conv=fsync status=none"
      rm -f "$dir/target" && : >"$dir/target"
      timed "$work/image-$where-raw.txt" target/release/girder write-image --url "$base/disk.img" --checksum "$raw_sum" "$dir/target"
      rm -f "$dir/target" && : >"$dir/target"
      timed "$work/image-$where-qcow2.txt" target/release/girder write-image --url "$base/disk.qcow2" \
        --checksum "$qcow2_sum" --format qcow2 "$dir/target"
      cmp -s "$dir/target" "$work/assets/disk.img" || { say "the qcow2 write does not match the raw image"; exit 1; }
      rm -f "$dir/target"
    done
    rm -rf "$dir"
  done
  stop_server
  # "median MiB/s (median seconds)" of a file of seconds.
  rate() {
    sort -g "$1" | awk -v mib="$IMAGE_MIB" '{v[NR] = $1} END {
      m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      printf "%.0f MiB/s (%.2f s)", mib / m, m }'
  }
  ratio() { paste <(sort -g "$1") <(sort -g "$2") | awk '{a[NR] = $1; b[NR] = $2} END {
    m = (NR % 2) ? (NR + 1) / 2 : NR / 2; printf "%.2f×", b[m] / a[m] }'; }
  rss=$(grep -o '"peakRssKiB":[0-9]*' "$work/image-out.txt" | cut -d: -f2 | sort -n | tail -1)
  {
    echo "| $IMAGE_MIB MiB image from girder pxe over a veth, median of $REPS_IMAGE | curl to /dev/null | curl \\| dd bs=1M conv=fsync | girder write-image, raw + sha256 | girder write-image, qcow2 + sha256 | raw against curl \\| dd |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for where in disk tmpfs; do
      echo "| file on $where | $(rate "$work/image-$where-ceiling.txt") | $(rate "$work/image-$where-dd.txt") | $(rate "$work/image-$where-raw.txt") | $(rate "$work/image-$where-qcow2.txt") | $(ratio "$work/image-$where-raw.txt" "$work/image-$where-dd.txt") |"
    done
    echo
    echo "peak RSS of girder write-image: $((rss / 1024)) MiB"
  } | tee "$work/summary-image.md"
  say "figures, write reports and summary-image.md are in $work"
  exit 0
fi

dd if=/dev/urandom of="$work/assets/big.img" bs=1M count=100 status=none
ln "$work/assets/big.img" "$work/www/big.img"

# ---- DHCP ----------------------------------------------------------------
# perfdhcp's statistics for one run: "DO_sent DO_recv RA_sent RA_recv rate".
perf_figures() {
  awk '/Statistics for: DISCOVER-OFFER/ {s = "DO"} /Statistics for: REQUEST-ACK/ {s = "RA"}
       /^sent packets:/ {sent[s] = $3} /^received packets:/ {recv[s] = $3}
       /^Rate:/ {rate = $2}
       END {printf "%d %d %d %d %s\n", sent["DO"], recv["DO"], sent["RA"], recv["RA"], rate}' "$1"
}
# UDP datagrams a namespace's kernel dropped because a socket's receive
# queue was full: on the server side the server fell behind, on the client
# side perfdhcp did (Kea's raw socket is not a UDP socket: not counted).
rcvbuf_errors() { ip netns exec "$1" awk '/^Udp:/ {n++} /^Udp:/ && n == 2 {print $6}' /proc/net/snmp; }
: >"$work/dhcp.tsv"
dhcp_sweep() {
  local name="$1" start="$2"; shift 2
  local rate out
  for rate in $RATES; do
    "$start" "$@"
    out="$work/perfdhcp-$name-$rate.txt"
    srv0=$(rcvbuf_errors "$SRV"); cli0=$(rcvbuf_errors "$CLI")
    in_cli perfdhcp -4 -l gb-cli -r "$rate" -p "$PERIOD" -R "$RANGE" -W 1000000 10.250.0.1 >"$out" 2>&1 || true
    srv_drops=$(($(rcvbuf_errors "$SRV") - srv0)); cli_drops=$(($(rcvbuf_errors "$CLI") - cli0))
    stop_server
    read -r do_s do_r ra_s ra_r _ < <(perf_figures "$out")
    # Drops are counted over the whole DORA: DISCOVERs that got no ACK in
    # the end. Done = ACKs per second of the sending period (perfdhcp's own
    # "Rate:" also counts the -W wait after it).
    awk -v n="$name" -v r="$rate" -v ds="$do_s" -v dr="$do_r" -v rs="$ra_s" -v rr="$ra_r" -v p="$PERIOD" \
      -v sd="$srv_drops" -v cd="$cli_drops" 'BEGIN {
      drop = ds ? 100 * (ds - rr) / ds : 100
      printf "%s\t%d\t%.0f\t%d\t%d\t%d\t%d\t%.3f\t%d\t%d\n", n, r, rr / p, ds, dr, rs, rr, drop, sd, cd }' | tee -a "$work/dhcp.tsv" >&2
    awk -v n="$name" -v r="$rate" '$1 == n && $2 == r && $8 > 20 {exit 1}' "$work/dhcp.tsv" || break
  done
}
say "DHCP: server rate(asked) rate(done) DO_sent DO_recv RA_sent RA_recv drop% server_rcvbuf_drops client_rcvbuf_drops"
dhcp_sweep girder start_girder
dhcp_sweep dnsmasq start_dnsmasq
dhcp_sweep dnsmasq-leasefile-ro start_dnsmasq --leasefile-ro
dhcp_sweep kea start_kea

# ---- TFTP and HTTP -------------------------------------------------------
# girder (10.250.0.1) and the reference servers (dnsmasq's TFTP on
# 10.250.0.3, busybox httpd on 10.250.0.1:$((HTTP_PORT + 1))) run at the same
# time and the fetches alternate between them, so load from elsewhere on the
# host falls on both alike.
# "median (fastest)" of a file of numbers, in milliseconds, or MB/s with MB.
stats() {
  sort -g "$1" | awk -v unit="${2:-ms}" '{v[NR] = $1} END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    if (unit == "ms") printf "%.1f ms (fastest %.1f ms)", m * 1000, v[1] * 1000
    else printf "%.0f MB/s (fastest %.0f MB/s)", m / 1e6, v[NR] / 1e6 }'
}
tftp_curl() { in_cli curl -fsS --tftp-blksize 1468 -o /dev/null -w '%{time_total}\n' "tftp://$1/ipxe.efi"; }
# tftp_window ADDR BLKSIZE WINDOWSIZE: a TFTP read of ipxe.efi with windowsize
# (RFC 7440), which curl cannot ask for; prints the seconds it took.
tftp_window() {
  in_cli python3 - "$1" "$2" "$3" <<'PY'
import socket, struct, sys, time
server, blksize, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
start = time.monotonic()
s.sendto(b"\x00\x01ipxe.efi\x00octet\x00blksize\x00%d\x00windowsize\x00%d\x00" % (blksize, window), (server, 69))
got = 0
while True:
    data, peer = s.recvfrom(65536)
    op = struct.unpack("!H", data[:2])[0]
    if op == 6:  # OACK: the server may lower or leave out an option
        fields = data[2:].split(b"\x00")
        agreed = dict(zip(fields[0::2], fields[1::2]))
        blksize = int(agreed.get(b"blksize", b"512"))
        window = int(agreed.get(b"windowsize", b"1"))
        s.sendto(struct.pack("!HH", 4, 0), peer)
        continue
    if op != 3:
        sys.exit("TFTP error: %r" % data)
    block = struct.unpack("!H", data[2:4])[0]
    if block == (got + 1) & 0xFFFF:
        got += 1
        last = len(data) - 4 < blksize
        if last or got % window == 0:
            s.sendto(struct.pack("!HH", 4, block), peer)
        if last:
            break
    else:  # a gap: acknowledge what arrived, the server goes on from there
        s.sendto(struct.pack("!HH", 4, got & 0xFFFF), peer)
print("%.6f" % (time.monotonic() - start))
PY
}
http_speed() { in_cli curl -fsS -o /dev/null -w '%{speed_download}\n' "$1"; }

in_srv ip addr add 10.250.0.3/16 dev gb-srv
start_girder
"${srv[@]}" dnsmasq --no-daemon --conf-file=/dev/null --pid-file= --port=0 --listen-address=10.250.0.3 \
  --bind-interfaces --enable-tftp --tftp-root=/usr/lib/ipxe --log-facility="$work/dnsmasq-tftp.log" \
  >"$work/dnsmasq-tftp.out" 2>&1 &
dnsmasq_pid=$!
extra_pids+=("$dnsmasq_pid")
"${srv[@]}" busybox httpd -f -p "10.250.0.1:$((HTTP_PORT + 1))" -h "$work/www" &
busybox_pid=$!
extra_pids+=("$busybox_pid")
sleep 1
ipxe_size=$(stat -L -c %s /usr/lib/ipxe/ipxe.efi)
say "TFTP: $REPS fetches of ipxe.efi ($ipxe_size bytes) from each server, alternating"
: >"$work/tftp-girder.txt"; : >"$work/tftp-dnsmasq.txt"; : >"$work/tftp-girder-w8.txt"; : >"$work/tftp-dnsmasq-w8.txt"
for i in $(seq "$REPS"); do
  tftp_curl 10.250.0.1 >>"$work/tftp-girder.txt"
  tftp_curl 10.250.0.3 >>"$work/tftp-dnsmasq.txt"
  tftp_window 10.250.0.1 1468 8 >>"$work/tftp-girder-w8.txt"
  tftp_window 10.250.0.3 1468 8 >>"$work/tftp-dnsmasq-w8.txt"
done
say "HTTP: $REPS_HTTP fetches of a 100 MB file from each server, alternating"
: >"$work/http-girder.txt"; : >"$work/http-busybox.txt"
for i in $(seq "$REPS_HTTP"); do
  http_speed "http://10.250.0.1:$HTTP_PORT/assets/big.img" >>"$work/http-girder.txt"
  http_speed "http://10.250.0.1:$((HTTP_PORT + 1))/big.img" >>"$work/http-busybox.txt"
done
stop_process "$busybox_pid"
stop_process "$dnsmasq_pid"
stop_server
wait 2>/dev/null || true
tftp_girder=$(stats "$work/tftp-girder.txt")
tftp_girder_w8=$(stats "$work/tftp-girder-w8.txt")
tftp_dnsmasq=$(stats "$work/tftp-dnsmasq.txt")
tftp_dnsmasq_w8=$(stats "$work/tftp-dnsmasq-w8.txt")
http_girder=$(stats "$work/http-girder.txt" MB)
http_busybox=$(stats "$work/http-busybox.txt" MB)

# ---- summary -------------------------------------------------------------
# The highest asked rate a server completed with at most 0.1 % of DORAs lost.
best() { awk -v n="$1" '$1 == n && $8 <= 0.1 && $2 > b {b = $2; g = $3} END {printf "%s (done %s/s)", b ? b "/s" : "none", b ? g : "-"}' "$work/dhcp.tsv"; }
{
  echo "| server | highest rate with <= 0.1 % drops (DORA/s asked) |"
  echo "| --- | --- |"
  for n in girder dnsmasq dnsmasq-leasefile-ro kea; do echo "| $n | $(best "$n") |"; done
  echo
  echo "| server | rate asked | DORA/s done | DISCOVER sent | OFFER received | REQUEST sent | ACK received | lost DORAs | dropped by the server's socket | dropped by perfdhcp's socket |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  awk -F'\t' '{printf "| %s | %d | %d | %d | %d | %d | %d | %.2f %% | %s | %d |\n", $1, $2, $3, $4, $5, $6, $7, $8, $1 == "kea" ? "n/a" : $9, $10}' "$work/dhcp.tsv"
  echo
  echo "| TFTP, ipxe.efi ($ipxe_size bytes), median of $REPS | girder | dnsmasq |"
  echo "| --- | --- | --- |"
  echo "| curl, blksize 1468 | $tftp_girder | $tftp_dnsmasq |"
  echo "| python client, blksize 1468, windowsize 8 | $tftp_girder_w8 | $tftp_dnsmasq_w8 |"
  echo
  echo "| HTTP, 100 MB, median of $REPS_HTTP | girder /assets/ | busybox httpd |"
  echo "| --- | --- | --- |"
  echo "| curl speed_download | $http_girder | $http_busybox |"
} | tee "$work/summary.md"
say "raw perfdhcp output, logs and summary.md are in $work"
