#!/usr/bin/env bash
# Boots the nested rig's L1 host (QEMU in software emulation, emulating an AMD EPYC with SVM)
# and runs one scenario inside it; its serial console is this process's stdio.
#   run-l1.sh RIG_DIR SCENARIO
# idle=poll keeps the L1 CPUs from halting: Debian's QEMU 7.2 under TCG sometimes never wakes
# a halted vCPU (DESIGN.md section 10).
set -euo pipefail
dir=$1 scenario=$2
exec qemu-system-x86_64 -accel tcg -cpu EPYC -smp 2 -m 3G \
  -display none -serial stdio -monitor none -nic none -no-reboot \
  -kernel "$dir/vmlinuz" -initrd "$dir/initramfs.cpio.gz" \
  -append "console=ttyS0 idle=poll panic=-1 rig.scenario=$scenario"
