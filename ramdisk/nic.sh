#!/bin/sh
# Prints the name of the interface with MAC $1 (any case), or, without a
# MAC, the first physical one; waits up to 30 s for it to appear.
want="$(echo "${1:-}" | tr 'A-F' 'a-f')"
i=0
while [ $i -lt 120 ]; do
  for dev in /sys/class/net/*; do
    name="${dev##*/}"
    [ "$name" = lo ] && continue
    [ -e "$dev/device" ] || continue
    if [ -z "$want" ] || [ "$(cat "$dev/address")" = "$want" ]; then
      echo "$name"
      exit 0
    fi
  done
  sleep 0.25
  i=$((i + 1))
done
exit 1
