#!/usr/bin/env bash
# A real BIND 9 for the DNS registration tests: authoritative, dynamic
# updates allowed with one TSIG key, listening on 127.0.0.1 only.
#
#   e2e/bind.sh install                    apt-get install bind9 bind9-dnsutils when missing
#   e2e/bind.sh start DIR PORT ZONE...     config, key and zones in DIR; prints named's pid
#   e2e/bind.sh stop DIR                   stops the instance started in DIR
#
# After `start`, DIR/key.name, DIR/key.algorithm and DIR/key.secret hold the
# TSIG key (the secret base64, as in the Secret girder reads; the algorithm
# is hmac-sha256 unless GIRDER_BIND_ALGORITHM says otherwise), and
# DIR/named.log named's output. named runs in its own process group, without
# chroot and without privileges dropped to another user, with DIR as its
# directory; nothing listens anywhere but 127.0.0.1.
set -euo pipefail

KEY_NAME=girder-test
ALGORITHM="${GIRDER_BIND_ALGORITHM:-hmac-sha256}"

need() {
  for tool in named tsig-keygen dig nsupdate named-checkconf; do
    command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 || return 1
  done
}

install() {
  export PATH="$PATH:/usr/sbin:/sbin"
  if need; then return 0; fi
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bind9 bind9-dnsutils >&2 \
    || { "${sudo[@]}" apt-get update >&2 && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bind9 bind9-dnsutils >&2; }
  need || { echo "bind.sh: named, tsig-keygen, dig or nsupdate still missing after apt-get" >&2; exit 1; }
}

start() {
  local dir="$1" port="$2"
  shift 2
  [ "$#" -gt 0 ] || { echo "usage: bind.sh start DIR PORT ZONE..." >&2; exit 2; }
  export PATH="$PATH:/usr/sbin:/sbin"
  install
  dir="$(cd "$dir" && pwd)"
  tsig-keygen -a "$ALGORITHM" "$KEY_NAME" >"$dir/key.conf"
  printf '%s' "$KEY_NAME" >"$dir/key.name"
  printf '%s' "$ALGORITHM" >"$dir/key.algorithm"
  sed -n 's/.*secret "\(.*\)";.*/\1/p' "$dir/key.conf" | tr -d '\n' >"$dir/key.secret"
  {
    cat <<EOF
options {
  directory "$dir";
  pid-file "$dir/named.pid";
  session-keyfile "$dir/session.key";
  managed-keys-directory "$dir";
  listen-on port $port { 127.0.0.1; };
  listen-on-v6 { none; };
  recursion no;
  dnssec-validation no;
  notify no;
};
controls { };
include "$dir/key.conf";
EOF
    for zone in "$@"; do
      printf 'zone "%s" { type primary; file "%s/%s.db"; allow-update { key "%s"; }; };\n' \
        "$zone" "$dir" "$zone" "$KEY_NAME"
      printf '$TTL 300\n@ IN SOA localhost. hostmaster.localhost. 1 3600 600 86400 300\n@ IN NS localhost.\n' \
        >"$dir/$zone.db"
    done
  } >"$dir/named.conf"
  named-checkconf "$dir/named.conf"
  setsid named -g -c "$dir/named.conf" >"$dir/named.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$dir/named.shell-pid"
  for _ in $(seq 1 100); do
    if dig +time=1 +tries=1 @127.0.0.1 -p "$port" "$1" SOA +short 2>/dev/null | grep -q localhost; then
      echo "$pid"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bind.sh: named did not start; its log:" >&2
  cat "$dir/named.log" >&2
  kill "$pid" 2>/dev/null || true
  exit 1
}

stop() {
  local dir="$1" pid
  pid="$(cat "$dir/named.shell-pid" 2>/dev/null || true)"
  [ -n "$pid" ] || return 0
  # setsid made named the leader of its own process group.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/named.shell-pid"; return 0; }
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$dir/named.shell-pid"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 install | start DIR PORT ZONE... | stop DIR" >&2; exit 2 ;;
esac
