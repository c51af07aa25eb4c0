#!/usr/bin/env bash
# sushy-tools' Redfish emulator (`sushy-emulator --fake`), the real Redfish
# peer of the tests: installed once into a venv cached by version, started on
# loopback only.
#
#   e2e/sushy.sh install                        create the venv (idempotent); prints its bin dir
#   e2e/sushy.sh start PORT CONFIG [LOGFILE]    start an emulator on 127.0.0.1:PORT with the
#                                               given config file; prints its PID and returns
#                                               at once (callers poll the service root)
#   e2e/sushy.sh stop PID                       stop that emulator and wait until it is gone
#   e2e/sushy.sh htpasswd FILE USER             add USER to an htpasswd FILE (bcrypt, the only
#                                               kind sushy-tools reads); the password is read
#                                               from stdin, so it never shows in `ps`
#
# The config file is Python (sushy-tools' format), e.g.
#   SUSHY_EMULATOR_FAKE_DRIVER = True
#   SUSHY_EMULATOR_AUTH_FILE = '/path/htpasswd'      # basic auth (bcrypt htpasswd)
#   SUSHY_EMULATOR_SSL_CERT = '/path/cert.pem'       # HTTPS
#   SUSHY_EMULATOR_SSL_KEY = '/path/key.pem'
#   SUSHY_EMULATOR_FAKE_SYSTEMS = [{'uuid': ..., 'name': ..., 'power_state': 'Off',
#                                   'nics': [{'mac': ...}]}, ...]   # default: one system
#   SUSHY_EMULATOR_STATE_DIR = '/path/state'         # where the fake driver persists power and
#                                                    # boot state; the default, /tmp/sushy-emulator,
#                                                    # is shared: give each emulator its own
# sushy-tools 2.2.0's fake driver applies a power change 1 to 11 s after it is
# asked; it has no SessionService, sends no ETags and never answers 503.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SUSHY_TOOLS_VERSION="${SUSHY_TOOLS_VERSION:-2.2.0}"
GIRDER_CACHE="${GIRDER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/girder}"
VENV="$GIRDER_CACHE/venv/sushy-$SUSHY_TOOLS_VERSION"
log() { echo "sushy: $*" >&2; }

python_bin() {
  # Debian's interpreter first: its venv module is what python3-venv provides.
  if [ -x /usr/bin/python3 ]; then echo /usr/bin/python3; else command -v python3 || echo /usr/bin/python3; fi
}

# python3-venv for the venv itself; python3-dev in case pip must build a
# wheel (bcrypt, for one) from source on this platform.
ensure_python() {
  local py debs=()
  py="$(python_bin)"
  if [ ! -x "$py" ]; then
    debs+=(python3 python3-venv python3-dev)
  else
    "$py" -c 'import venv, ensurepip' 2>/dev/null || debs+=(python3-venv)
    [ -f "$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || debs+=(python3-dev)
  fi
  [ ${#debs[@]} -eq 0 ] && return
  apt_install "${debs[@]}"
}

install() {
  # The marker is written last: a venv without it is a broken install, redone.
  if [ -f "$VENV/.girder-complete" ] && [ -x "$VENV/bin/sushy-emulator" ]; then
    echo "$VENV/bin"
    return
  fi
  ensure_python
  log "installing sushy-tools $SUSHY_TOOLS_VERSION into $VENV (first run only)"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$(python_bin)" -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "sushy-tools==$SUSHY_TOOLS_VERSION" >&2 ||
    { rm -rf "$VENV"; log "pip install sushy-tools==$SUSHY_TOOLS_VERSION failed"; exit 1; }
  touch "$VENV/.girder-complete"
  echo "$VENV/bin"
}

start() {
  local port="${1:?usage: $0 start PORT CONFIG [LOGFILE]}" config="${2:?usage: $0 start PORT CONFIG [LOGFILE]}"
  local logfile="${3:-/dev/null}"
  [ -f "$config" ] || { log "no config file $config"; exit 1; }
  local bin; bin="$(install)"
  # setsid: its own process group, so `stop` ends exactly this emulator.
  setsid "$bin/sushy-emulator" --fake --interface 127.0.0.1 --port "$port" --config "$config" \
    </dev/null >>"$logfile" 2>&1 &
  echo $!
}

stop() {
  stop_process "${1:?usage: $0 stop PID}"
}

htpasswd() {
  local file="${1:?usage: $0 htpasswd FILE USER}" user="${2:?usage: $0 htpasswd FILE USER}"
  local bin; bin="$(install)"
  USERNAME="$user" "$bin/python" -c '
import os, sys, bcrypt
password = sys.stdin.readline().rstrip("\n").encode()
print(os.environ["USERNAME"] + ":" + bcrypt.hashpw(password, bcrypt.gensalt()).decode())
' >>"$file"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  htpasswd) shift; htpasswd "$@" ;;
  *) echo "usage: $0 install | start PORT CONFIG [LOGFILE] | stop PID | htpasswd FILE USER" >&2; exit 2 ;;
esac
