# Shared by the e2e scripts (sourced, not run).

# stop_process PID [SECONDS]: SIGTERM, wait (bounded) until it is gone, then
# SIGKILL. Quiet when the process is already gone.
stop_process() {
  local pid="$1" deadline=$((SECONDS + ${2:-10}))
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  # Polls the condition "process gone", bounded by the deadline.
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "process $pid did not stop on SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
}

# apt_install PKG...: installs Debian packages (as root), refreshing the
# package lists first; says what to run when not root.
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: $*; install them (sudo apt-get install $*) or run as root" >&2
    exit 1
  fi
  echo "installing Debian packages: $*" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}
