#!/bin/sh
# Loads the drivers the hardware asks for (no udev here: every device's
# modalias), then the ones girder needs on QEMU and common servers. The
# kernel loads the rest on demand through busybox's modprobe.
echo /bin/modprobe >/proc/sys/kernel/modprobe
for alias in $(cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u); do
  modprobe -q -b "$alias" 2>/dev/null
done
for module in virtio_pci virtio_net virtio_blk virtio_scsi sd_mod ahci nvme vfat nls_cp437 nls_iso8859_1 nls_ascii; do
  modprobe -q "$module" 2>/dev/null
done
# Disks and NICs appear asynchronously; give them a moment to settle.
i=0
while [ $i -lt 20 ] && [ -z "$(ls /sys/class/net | grep -v '^lo$')" ]; do sleep 0.25; i=$((i + 1)); done
