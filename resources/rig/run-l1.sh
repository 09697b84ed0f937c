#!/usr/bin/env bash
# Boots the nested rig's L1 host (QEMU in software emulation, emulating an AMD EPYC with SVM)
# and runs one scenario inside it; its serial console is this process's stdio.
#   run-l1.sh RIG_DIR SCENARIO
# Optional environment, for scenarios with two L1 hosts:
#   RIG_SMP, RIG_MEM      CPUs (default 2) and memory (default 3G) of the L1 host
#   RIG_NET=PORT:PEER     a virtio NIC on a UDP socket: this host listens on 127.0.0.1:PORT and
#                         sends to 127.0.0.1:PEER (the other L1 host does the reverse)
#   RIG_MAC               that NIC's MAC address
#   RIG_LUN=FILE          a raw image shared with the other host, attached as a virtio disk
#                         (/dev/vda inside) with locking off, as a shared LUN would be
#   RIG_TOOLS=FILE        a read-only disk image with serial "tools" (QEMU for the benchmark)
#   RIG_APPEND            more kernel command-line words (rig.NAME=VALUE reach the scenario)
#   RIG_QMP=PATH          a QMP socket there (the harness asks a silent L1 where its CPUs are)
# idle=poll keeps the L1 CPUs from halting: Debian's QEMU 7.2 under TCG sometimes never wakes
# a halted vCPU (docs/design.md section 10), seen with two L1 CPUs and with one (a 1-CPU L1
# fell silent 20 s into the disk-net scenario's TCP stream).
set -euo pipefail
dir=$1 scenario=$2
smp=${RIG_SMP:-2}
idle=idle=poll
args=()
if [ -n "${RIG_NET:-}" ]; then
  args+=(-netdev "socket,id=n0,udp=127.0.0.1:${RIG_NET#*:},localaddr=127.0.0.1:${RIG_NET%%:*}"
         -device "virtio-net-pci,netdev=n0,mac=${RIG_MAC:-52:54:00:00:00:01}")
else
  args+=(-nic none)
fi
if [ -n "${RIG_LUN:-}" ]; then
  args+=(-drive "file=$RIG_LUN,format=raw,if=none,id=lun,file.locking=off"
         -device "virtio-blk-pci,drive=lun,share-rw=on,serial=lun0")
fi
if [ -n "${RIG_QMP:-}" ]; then
  args+=(-qmp "unix:$RIG_QMP,server=on,wait=off")
fi
if [ -n "${RIG_TOOLS:-}" ]; then
  args+=(-drive "file=$RIG_TOOLS,format=raw,if=none,id=tools,readonly=on"
         -device "virtio-blk-pci,drive=tools,serial=tools")
fi
exec qemu-system-x86_64 -accel tcg -cpu EPYC -smp "$smp" -m "${RIG_MEM:-3G}" \
  -display none -serial stdio -monitor none -no-reboot "${args[@]}" \
  -kernel "$dir/vmlinuz" -initrd "$dir/initramfs.cpio.gz" \
  -append "console=ttyS0 $idle panic=-1 rig.scenario=$scenario ${RIG_APPEND:-}"
