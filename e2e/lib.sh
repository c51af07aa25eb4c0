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
  with_apt_lock sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"' \
    apt_install "$@" >&2
}

# with_apt_lock COMMAND...: runs COMMAND holding this harness's apt lock, so
# the scripts make test runs side by side (girder's ramdisk builds in the
# background) never run apt-get at the same time (apt refuses a second one).
with_apt_lock() {
  local lock="${GIRDER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/girder}/.apt.lock"
  mkdir -p "$(dirname "$lock")"
  flock "$lock" "$@"
}

# ensure_debs PKG...: installs those of the Debian packages that are missing.
ensure_debs() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# debian_kernel CACHE: the kernel image package linux-image-amd64 points at,
# downloaded (never installed on this host) and unpacked once into
# CACHE/<package>_<version>/ (vmlinuz, lib/modules/<release>/); prints that
# directory. Shared by the PXE test assets and girder's ramdisk.
debian_kernel() {
  local cache="$1" pkg ver dir tmp
  pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1)"
  if [ -z "$pkg" ]; then
    # No package lists yet (a fresh container): refresh them once.
    [ "$(id -u)" -eq 0 ] || { echo "apt-cache knows no linux-image-amd64; run apt-get update as root" >&2; exit 1; }
    with_apt_lock apt-get update -qq >&2
    pkg="$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1)"
  fi
  [ -n "$pkg" ] || { echo "cannot tell which kernel package linux-image-amd64 depends on" >&2; exit 1; }
  ver="$(apt-cache show --no-all-versions "$pkg" | sed -n 's/^Version: //p' | head -n1)"
  [ -n "$ver" ] || { echo "no version known for $pkg" >&2; exit 1; }
  dir="$cache/${pkg}_${ver}"
  if [ -f "$dir/.girder-complete" ]; then echo "$dir"; return; fi
  mkdir -p "$cache"
  # One unpacking at a time (the PXE assets and the ramdisk may ask at once);
  # this runs in the caller's $(...), so the lock goes with it.
  exec 8>"$cache/.lock"
  flock 8
  if [ -f "$dir/.girder-complete" ]; then echo "$dir"; return; fi
  tmp="$(mktemp -d "$cache/.unpack.XXXXXX")"
  # apt-get download fetches the .deb (as _apt when it can read the
  # directory, hence the mode), dpkg-deb -x unpacks it without installing it.
  chmod 755 "$tmp"
  [ "$(id -u)" -ne 0 ] || chown _apt "$tmp" 2>/dev/null || true
  (cd "$tmp" && with_apt_lock apt-get download -q "$pkg=$ver" >&2) || { rm -rf "$tmp"; echo "apt-get download $pkg=$ver failed" >&2; exit 1; }
  dpkg-deb -x "$tmp/"*.deb "$tmp/unpacked"
  rm -rf "$dir"
  mkdir -p "$dir"
  local vmlinuz
  vmlinuz="$(ls "$tmp/unpacked/boot/"vmlinuz-* 2>/dev/null | head -n1)"
  [ -n "$vmlinuz" ] || { rm -rf "$tmp"; echo "no boot/vmlinuz-* in $pkg" >&2; exit 1; }
  cp "$vmlinuz" "$dir/vmlinuz"
  mkdir -p "$dir/lib"
  mv "$tmp/unpacked/lib/modules" "$dir/lib/modules"
  rm -rf "$tmp"
  touch "$dir/.girder-complete"
  echo "$dir"
}

# chassis_control DRIVER DIR get|set ...: ipmi_sim's chassis_control protocol
# (`get PARM...` prints `PARM:VALUE` lines, `set PARM VALUE...` prints nothing
# on success), shared by e2e/ipmi.sh's file chassis and e2e/vm.sh's QEMU one.
# The boot device is kept in DIR/boot; DRIVER_power DIR prints 1 or 0, and
# DRIVER_set DIR PARM VALUE carries out power, reset and shutdown (and sees
# every other accepted set).
chassis_control() {
  local driver="${1:?}" dir="${2:?usage: chassis DIR get|set ...}" op="${3:?usage: chassis DIR get|set ...}" parm val
  shift 3
  case "$op" in
    get)
      for parm in "$@"; do
        case "$parm" in
          power) echo "power:$("${driver}_power" "$dir")" ;;
          boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)" ;;
          *) echo "invalid parameter: $parm"; exit 1 ;;
        esac
      done
      ;;
    set)
      while [ $# -gt 0 ]; do
        parm="$1" val="${2:-}"
        [ -n "$val" ] || { echo "no value for $parm"; exit 1; }
        shift 2
        case "$parm" in
          power | reset | shutdown | identify) ;;
          boot)
            case "$val" in
              none | pxe | default | cdrom | bios) echo "$val" >"$dir/boot" ;;
              *) echo "invalid boot device: $val"; exit 1 ;;
            esac
            ;;
          *) echo "invalid parameter: $parm"; exit 1 ;;
        esac
        "${driver}_set" "$dir" "$parm" "$val"
      done
      ;;
    check) exit 1 ;;
    *) echo "unknown operation: $op"; exit 1 ;;
  esac
}

# build_static_girder: `girder` as one static binary (the ramdisk's agent and
# the container image's only program), built once for both; prints its path.
# The gnu target with a static C library (the musl target is not at hand
# here); RUSTFLAGS then reach only the target's code, not build scripts and
# proc macros. Paths of this checkout and of cargo's registry are written as
# fixed ones, so that where the clone sits does not change the binary.
build_static_girder() {
  local target=x86_64-unknown-linux-gnu root cargo_home
  root="$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
  cargo_home="${CARGO_HOME:-$HOME/.cargo}"
  echo "building the static girder (cargo build --profile ramdisk --target $target)" >&2
  RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$root=/girder --remap-path-prefix=$cargo_home=/cargo" \
    cargo build --locked --quiet --profile ramdisk --target "$target" --bin girder >&2
  echo "$root/target/$target/ramdisk/girder"
}
