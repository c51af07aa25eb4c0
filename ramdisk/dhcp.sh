#!/bin/sh
# Brings interface $1 up with DHCP (busybox udhcpc, which keeps renewing the
# lease in the background); retries until it has an address.
iface="$1"
ip link set lo up
ip link set "$iface" up
until udhcpc -i "$iface" -s /etc/girder/udhcpc.script -t 10 -T 3 -A 3 -b -p /run/udhcpc.pid >/run/udhcpc.log 2>&1 &&
  ip -4 -o addr show dev "$iface" | grep -q inet; do
  echo "girder-ramdisk: no DHCP answer on $iface yet; trying again"
  kill "$(cat /run/udhcpc.pid 2>/dev/null)" 2>/dev/null
  sleep 3
done
echo "girder-ramdisk: network: $(ip -4 -o addr show dev "$iface" | awk '{print $2, $4}')"
