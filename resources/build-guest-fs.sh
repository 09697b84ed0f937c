#!/usr/bin/env bash
# Builds the guest's userspace from Debian's busybox-static: a gzip'd cpio initramfs and an
# ext4 root image (mkfs.ext4 -d: no root or loop mount needed), both with resources/guest/init
# and its workloads. Cached under $VMM_CACHE_DIR by a hash of the inputs.
# Prints the directory holding initramfs.cpio.gz and rootfs.ext4 on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${VMM_CACHE_DIR:-/var/cache/vmm}
"$here/apt-install.sh" busybox-static cpio e2fsprogs gzip gcc libc6-dev >&2
bb_version=$(dpkg-query -W -f='${Version}' busybox-static)
key=$( (cat "$0" "$here/guest/init"; find "$here/guest/workloads" "$here/guest/tools" -type f | sort | xargs cat; echo "$bb_version"; gcc --version | sed -n 1p) | sha256sum | cut -c1-16)
out="$cache/guestfs-$key"
if [ -f "$out/initramfs.cpio.gz" ] && [ -f "$out/rootfs.ext4" ]; then
  echo "build-guest-fs: cached $out" >&2
  echo "$out"
  exit 0
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage" "$out.tmp"' EXIT
mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,etc,root,workloads,usr/bin,usr/sbin}
cp /bin/busybox "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
cp "$here/guest/init" "$stage/init"
ln -s ../init "$stage/sbin/init"
cp "$here"/guest/workloads/* "$stage/workloads/"
gcc -O2 -Wall -static -pthread -o "$stage/bin/continuity" "$here/guest/tools/continuity.c"
echo "root:x:0:0:root:/root:/bin/sh" > "$stage/etc/passwd"
mkdir -p "$out.tmp"
(cd "$stage" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -9n) > "$out.tmp/initramfs.cpio.gz"
mkfs.ext4 -q -F -L vmm-root -d "$stage" "$out.tmp/rootfs.ext4" 64M >&2
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
