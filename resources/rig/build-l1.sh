#!/usr/bin/env bash
# Builds the nested test rig's L1 host: Debian's cloud kernel (linux-image-cloud-amd64, its
# vmlinuz and the modules listed below, unpacked with dpkg -x) and an initramfs carrying
# busybox, those modules, a static vmm, rig-tools, the guest artifacts and the scenarios.
#   build-l1.sh OUT_DIR VMM_BIN GUEST_KERNEL_DIR GUEST_FS_DIR
# The unpacked kernel package is cached under $VMM_CACHE_DIR by its version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1 vmm_bin=$2 kernel_dir=$3 guestfs_dir=$4
cache=${VMM_CACHE_DIR:-/var/cache/vmm}
"$here/../apt-install.sh" busybox-static cpio gzip kmod qemu-system-x86 gcc libc6-dev openssl >&2

# The cloud kernel package, by the version the meta-package points at.
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ && p == "" {p = $2} END {print p}')
if [ -z "$pkg" ]; then
  "$here/../apt-install.sh" apt-utils >&2 || true
  apt-get update -q >&2
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ && p == "" {p = $2} END {print p}')
fi
[ -n "$pkg" ] || { echo "build-l1: cannot find the linux-image-cloud-amd64 package" >&2; exit 1; }
# Modules the L1 host loads, in dependency order: KVM; tun for the guests' taps; virtio-pci,
# virtio-net and the bridge for the network between two L1 hosts; virtio-blk for the shared LUN;
# the NFS server and client (NFSv4.1), the iSCSI target (LIO) and initiator, for the
# shared-storage scenarios.
modules="virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko arch/x86/kvm/kvm-amd.ko drivers/net/tun.ko
  drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko drivers/virtio/virtio_pci_legacy_dev.ko
  drivers/virtio/virtio_pci_modern_dev.ko drivers/virtio/virtio_pci.ko drivers/block/virtio_blk.ko
  net/core/failover.ko drivers/net/net_failover.ko drivers/net/virtio_net.ko net/llc/llc.ko
  net/802/stp.ko net/bridge/bridge.ko
  net/sunrpc/sunrpc.ko fs/nfs_common/grace.ko net/sunrpc/auth_gss/auth_rpcgss.ko
  fs/nfs_common/nfs_acl.ko fs/lockd/lockd.ko fs/nfsd/nfsd.ko fs/netfs/netfs.ko fs/fscache/fscache.ko
  fs/nfs/nfs.ko net/dns_resolver/dns_resolver.ko fs/nfs/nfsv4.ko
  drivers/scsi/scsi_common.ko drivers/scsi/scsi_mod.ko drivers/scsi/sd_mod.ko
  drivers/scsi/scsi_transport_iscsi.ko drivers/scsi/libiscsi.ko drivers/scsi/libiscsi_tcp.ko
  drivers/scsi/iscsi_tcp.ko fs/configfs/configfs.ko drivers/target/target_core_mod.ko
  drivers/target/target_core_file.ko drivers/target/target_core_iblock.ko
  drivers/target/iscsi/iscsi_target_mod.ko"
kdir="$cache/l1-$pkg-$(echo $modules | sha256sum | cut -c1-8)"
if [ ! -f "$kdir/vmlinuz" ]; then
  echo "build-l1: fetching $pkg" >&2
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download "$pkg" >&2 2>/dev/null || (apt-get update -q >&2 && apt-get download "$pkg" >&2))
  dpkg -x "$tmp"/*.deb "$tmp/x"
  rm -rf "$kdir.tmp" && mkdir -p "$kdir.tmp/modules"
  cp "$tmp"/x/boot/vmlinuz-* "$kdir.tmp/vmlinuz"
  moddir=$(echo "$tmp"/x/lib/modules/*)
  for m in $modules; do
    cp "$moddir/kernel/$m" "$kdir.tmp/modules/"
    basename "$m" .ko >> "$kdir.tmp/modules/order"
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
cp "$kdir"/modules/* "$stage/modules/"
gcc -O2 -Wall -static -o "$stage/rig/rig-tools" "$here/tools/rig-tools.c"
cp "$vmm_bin" "$stage/rig/vmm"
cp "$kernel_dir/bzImage" "$kernel_dir/vmlinux" "$guestfs_dir/initramfs.cpio.gz" "$stage/rig/guest/"
cp "$here"/scenarios/* "$stage/rig/scenarios/"
"$here/storage-tools.sh" "$stage"
# Certificates for the two-host scenarios' mutual TLS (--tls-dir): one set naming both hosts,
# made fresh for each build (openssl, in Cloud Hypervisor's file names).
"$here/../tls/make-certs.sh" "$stage/rig/tls" 10.0.0.1 10.0.0.2
mkdir -p "$out"
cp "$kdir/vmlinuz" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
(cd "$stage" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -1n) > "$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
echo "build-l1: $out ready ($pkg)" >&2
