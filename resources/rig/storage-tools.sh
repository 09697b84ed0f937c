#!/usr/bin/env bash
# Puts the userspace of NFS and iSCSI into the L1 initramfs staged at STAGE, for the
# shared-storage scenarios: the kernel NFS server's rpc.nfsd, rpc.mountd and exportfs, the
# client's mount.nfs (Debian's nfs-kernel-server and nfs-common), and open-iscsi's iscsistart
# (a login without iscsid). The packages are downloaded and unpacked (dpkg -x), not installed
# on this machine (their services would start here); the binaries' shared libraries come from
# the unpacked packages or this machine, into STAGE/lib/x86_64-linux-gnu with the loader.
#   storage-tools.sh STAGE
set -euo pipefail
stage=$1
here=$(cd "$(dirname "$0")" && pwd)
cache=${VMM_CACHE_DIR:-/var/cache/vmm}/storage-debs
pkgs="nfs-kernel-server nfs-common open-iscsi libopeniscsiusr libwrap0 libtirpc3 libtirpc-common"
mkdir -p "$cache"
if [ ! -f "$cache/done" ]; then
  (cd "$cache" && apt-get download $pkgs >&2 2>/dev/null || (apt-get update -q >&2 && apt-get download $pkgs >&2))
  rm -rf "$cache/x" && for d in "$cache"/*.deb; do dpkg -x "$d" "$cache/x"; done
  touch "$cache/done"
fi
x=$cache/x
libpath=$x/lib/x86_64-linux-gnu:$x/usr/lib/x86_64-linux-gnu
mkdir -p "$stage/lib/x86_64-linux-gnu" "$stage/lib64" "$stage/sbin" "$stage/usr/sbin" \
  "$stage/var/lib/nfs" "$stage/etc"
for b in usr/sbin/rpc.nfsd usr/sbin/rpc.mountd usr/sbin/exportfs sbin/mount.nfs sbin/iscsistart; do
  cp "$x/$b" "$stage/$b"
  LD_LIBRARY_PATH=$libpath ldd "$x/$b" | awk '/=> \// {print $3}' | while read -r lib; do
    cp -Ln "$lib" "$stage/lib/x86_64-linux-gnu/" 2>/dev/null || true
  done
done
ln -sf mount.nfs "$stage/sbin/mount.nfs4"
cp "$x/etc/netconfig" "$stage/etc/netconfig"
cp -L /lib64/ld-linux-x86-64.so.2 "$stage/lib64/"
# What the NFS tools expect to find.
touch "$stage/etc/exports" "$stage/var/lib/nfs/etab" "$stage/var/lib/nfs/rmtab"
echo "root:x:0:0:root:/root:/bin/sh" > "$stage/etc/passwd"
echo "root:x:0:" > "$stage/etc/group"
printf 'hosts: files\n' > "$stage/etc/nsswitch.conf"
printf 'sunrpc 111/tcp\nsunrpc 111/udp\nnfs 2049/tcp\nnfs 2049/udp\niscsi-target 3260/tcp\n' > "$stage/etc/services"
echo "storage-tools: $(ls "$stage/lib/x86_64-linux-gnu" | wc -l) libraries" >&2
