#!/usr/bin/env bash
# Builds the read-only disk image that carries Debian's QEMU into the nested rig's L1 hosts,
# for the migration benchmark's side-by-side run (QEMU with -enable-kvm inside L1). The L1
# initramfs stays small; only the benchmark attaches this image (/dev/vdb inside, mounted on
# /opt/qemu): bin/qemu-system-x86_64, lib/ (its shared libraries and the loader), share/ (the
# microvm firmware).
#   build-qemu-image.sh OUT_IMAGE
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1
"$here/../apt-install.sh" qemu-system-x86 e2fsprogs >&2
qemu=/usr/bin/qemu-system-x86_64
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,lib,share}
cp "$qemu" "$stage/bin/"
ldd "$qemu" | awk '/=> \// {print $3} /^\t\/lib/ {print $1}' | while read -r lib; do cp -L "$lib" "$stage/lib/"; done
cp -L /usr/share/qemu/bios-microvm.bin /usr/share/qemu/qboot.rom "$stage/share/"
size=$(( $(du -sm "$stage" | cut -f1) + 32 ))
mkfs.ext4 -q -F -L qemu -d "$stage" "$out.tmp" "${size}M"
mv "$out.tmp" "$out"
echo "build-qemu-image: $out ($size MiB, $("$qemu" --version | sed -n 1p))" >&2
