#!/usr/bin/env bash
# Builds the nested test rig's L1 host: Debian's cloud kernel (linux-image-cloud-amd64, its
# vmlinuz and the kvm, kvm-amd and irqbypass modules, unpacked with dpkg -x) and an initramfs
# carrying busybox, those modules, a static vmm, the guest artifacts and the scenarios.
#   build-l1.sh OUT_DIR VMM_BIN GUEST_KERNEL_DIR GUEST_FS_DIR
# The unpacked kernel package is cached under $VMM_CACHE_DIR by its version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1 vmm_bin=$2 kernel_dir=$3 guestfs_dir=$4
cache=${VMM_CACHE_DIR:-/var/cache/vmm}
"$here/../apt-install.sh" busybox-static cpio gzip kmod qemu-system-x86 >&2

# The cloud kernel package, by the version the meta-package points at.
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
  "$here/../apt-install.sh" apt-utils >&2 || true
  apt-get update -q >&2
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "build-l1: cannot find the linux-image-cloud-amd64 package" >&2; exit 1; }
kdir="$cache/l1-$pkg"
if [ ! -f "$kdir/vmlinuz" ]; then
  echo "build-l1: fetching $pkg" >&2
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download "$pkg" >&2 2>/dev/null || (apt-get update -q >&2 && apt-get download "$pkg" >&2))
  dpkg -x "$tmp"/*.deb "$tmp/x"
  rm -rf "$kdir.tmp" && mkdir -p "$kdir.tmp/modules"
  cp "$tmp"/x/boot/vmlinuz-* "$kdir.tmp/vmlinuz"
  moddir=$(echo "$tmp"/x/lib/modules/*)
  # Modules the L1 host loads, in dependency order.
  for m in virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko arch/x86/kvm/kvm-amd.ko drivers/net/tun.ko; do
    cp "$moddir/kernel/$m" "$kdir.tmp/modules/"
  done
  rm -rf "$kdir" && mv "$kdir.tmp" "$kdir"
  rm -rf "$tmp"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,modules,rig/guest,rig/scenarios}
cp /bin/busybox "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
cp "$here/l1-init" "$stage/init"
cp "$kdir"/modules/*.ko "$stage/modules/"
cp "$vmm_bin" "$stage/rig/vmm"
cp "$kernel_dir/bzImage" "$kernel_dir/vmlinux" "$guestfs_dir/initramfs.cpio.gz" "$stage/rig/guest/"
cp "$here"/scenarios/* "$stage/rig/scenarios/"
mkdir -p "$out"
cp "$kdir/vmlinuz" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
(cd "$stage" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -1n) > "$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
echo "build-l1: $out ready ($pkg)" >&2
