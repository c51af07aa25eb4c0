#!/usr/bin/env bash
# `make fuzz`: runs every cargo-fuzz target in fuzz/ (the PXE sidecar's DHCP
# and TFTP parsers and its DHCP decision; the BMC drivers' Redfish model and
# inventory, and their IPMI decoders) for a bounded time each.
#
#   e2e/fuzz.sh                      (FUZZ_SECONDS=60 per target)
#   FUZZ_SECONDS=10 FUZZ_TARGETS="tftp_parse" e2e/fuzz.sh
#
# Installs cargo-fuzz (into ~/.cargo/bin) when it is missing. cargo-fuzz
# needs unstable rustc flags (-Zsanitizer=address): the nightly toolchain when
# rustup has one, else the stable toolchain with RUSTC_BOOTSTRAP=1.
#
# Each target starts from its committed seeds (fuzz/corpus/<target>) and from
# what earlier runs found (fuzz/corpus-run/<target>, not committed: libFuzzer
# adds new inputs to the first corpus directory it is given). Crash inputs go
# to fuzz/artifacts/<target>/, logs to fuzz/target/logs/. Fails when any
# target crashes, naming the input; prints runs, exec/s and coverage per
# target from libFuzzer's final stats.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. e2e/lib.sh
log() { echo "fuzz: $*" >&2; }

seconds="${FUZZ_SECONDS:-60}"
timeout="${FUZZ_TIMEOUT:-30}"
case "$seconds$timeout" in
  '' | *[!0-9]*)
    log "FUZZ_SECONDS and FUZZ_TIMEOUT must be whole seconds (got '$seconds' and '$timeout')"
    exit 2
    ;;
esac
root="$PWD"
target_dir="$root/fuzz/target"

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked
fi

# cargo-fuzz builds with -Zsanitizer=address and friends.
if command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly'; then
  cargo=(cargo +nightly)
  toolchain="nightly"
elif command -v rustup >/dev/null; then
  cargo=(env RUSTC_BOOTSTRAP=1 cargo +stable)
  toolchain="stable with RUSTC_BOOTSTRAP=1"
else
  cargo=(env RUSTC_BOOTSTRAP=1 cargo)
  toolchain="$(rustc --version) with RUSTC_BOOTSTRAP=1"
fi
fuzz=("${cargo[@]}" fuzz)
read -r -a targets <<<"${FUZZ_TARGETS:-$("${fuzz[@]}" list --fuzz-dir fuzz | tr '\n' ' ')}"
[ "${#targets[@]}" -gt 0 ] || { log "no fuzz targets in fuzz/"; exit 1; }

# dhcp_decide keeps a lease journal under the temporary directory.
scratch="$(mktemp -d "${TMPDIR:-/tmp}/girder-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

log "building ${targets[*]} ($toolchain, address sanitizer; the first build takes a while)"
for target in "${targets[@]}"; do
  "${fuzz[@]}" build --fuzz-dir fuzz --target-dir "$target_dir" "$target"
done

mkdir -p "$target_dir/logs"
summary=()
crashed=()
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus-run/$target" "fuzz/corpus/$target"
  output="$target_dir/logs/$target.log"
  log "$target: ${seconds}s (log: ${output#"$root"/})"
  status=0
  TMPDIR="$scratch" "${fuzz[@]}" run --fuzz-dir fuzz --target-dir "$target_dir" "$target" \
    "fuzz/corpus-run/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout="$timeout" -print_final_stats=1 \
    >"$output" 2>&1 || status=$?
  # libFuzzer's last status line ("#N DONE cov: C ft: F corp: U/S ...") and
  # its final stats ("stat::number_of_executed_units: N", ...).
  stat() { sed -n "s/^stat::$1: *//p" "$output" | tail -n 1; }
  runs="$(stat number_of_executed_units)"
  rate="$(stat average_exec_per_sec)"
  last="$(grep -E '^#[0-9]+.*cov: ' "$output" | tail -n 1 || true)"
  cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
  features="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
  corpus="$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")"
  result="ok"
  if [ "$status" -ne 0 ]; then
    input="$(grep -oE 'fuzz/artifacts/[^ ]+' "$output" | tail -n 1 || true)"
    result="FAILED (exit $status)"
    crashed+=("$target: ${input:-no crash input written; see $output}")
    echo >&2
    log "$target failed; its log from the failure on:"
    # From the panic, sanitizer report, timeout or OOM to the end (the stack
    # trace and the input); the last lines when none is found.
    if grep -qE 'panicked at|==[0-9]+==ERROR|ERROR: libFuzzer' "$output"; then
      awk '/panicked at|==[0-9]+==ERROR|ERROR: libFuzzer/ { found = 1 } found' "$output" | head -n 200 >&2
    else
      tail -n 60 "$output" >&2
    fi
    echo >&2
    [ -z "$input" ] || log "$target: crash input $input (reproduce: ${fuzz[*]} run --fuzz-dir fuzz --target-dir fuzz/target $target $input)"
  fi
  summary+=("$(printf '%-12s %10s %8s %6s %7s %-12s %s' "$target" "${runs:-?}" "${rate:-?}" \
    "${cov:-?}" "${features:-?}" "${corpus:-?}" "$result")")
done

echo
printf '%-12s %10s %8s %6s %7s %-12s %s\n' target runs exec/s cov ft corpus result
printf '%s\n' "${summary[@]}"
if [ "${#crashed[@]}" -gt 0 ]; then
  echo
  log "crashes:"
  printf '  %s\n' "${crashed[@]}" >&2
  exit 1
fi
