#!/usr/bin/env bash
# Builds libvirt from Debian's source package (bookworm: 9.0.0) with only what its Cloud
# Hypervisor driver needs (virtchd, virsh; the ch driver on, every other hypervisor driver
# off), for the tests that drive this VMM through libvirt exactly as an operator would. It is
# installed into a private prefix under $VMM_CACHE_DIR (default /var/cache/vmm), named by a
# hash of this script and the source package's version, so it is built once per input; its
# sockets, state and configuration live inside that prefix and touch nothing of the host's.
# Prints the prefix on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${VMM_CACHE_DIR:-/var/cache/vmm}

# Debian's source packages: a deb-src entry for the archive the binary packages come from.
src_list=/etc/apt/sources.list.d/vmm-debian-src.sources
if ! grep -rqs "^Types: deb-src" /etc/apt/sources.list.d/ && ! grep -qs "^deb-src" /etc/apt/sources.list; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO tee "$src_list" >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  $SUDO apt-get update -q >&2
fi
"$here/apt-install.sh" dpkg-dev meson ninja-build pkgconf gcc libglib2.0-dev libxml2-dev \
  libxml2-utils libgnutls28-dev libtirpc-dev libyajl-dev libcurl4-gnutls-dev xsltproc \
  python3-docutils xz-utils >&2

# awk reads to the end (no early exit): under pipefail, apt-cache would die of SIGPIPE.
version=$(apt-cache showsrc libvirt | awk '/^Version:/ && v == "" {v = $2} END {print v}')
[ -n "$version" ] || { echo "build-libvirt: no libvirt source package in the apt sources" >&2; exit 1; }
key=$( (cat "$0"; echo "$version") | sha256sum | cut -c1-16)
out="$cache/libvirt-${version%%-*}-$key"
if [ -f "$out/.complete" ]; then
  echo "build-libvirt: cached $out" >&2
  echo "$out"
  exit 0
fi

# The prefix is compiled into libvirt, so the build installs in place; .complete marks it done.
rm -rf "$out" "$cache"/libvirt-build-*
work="$cache/libvirt-build-$key"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "build-libvirt: fetching the libvirt $version source package" >&2
apt-get source --download-only "libvirt=$version" >&2
tar -xf libvirt_"${version%%-*}".orig.tar.xz
cd libvirt-"${version%%-*}"
start=$(date +%s)
off=()
for d in qemu lxc libxl esx hyperv vbox vmware vz openvz bhyve network interface test; do
  off+=("-Ddriver_$d=disabled")
done
meson setup build --prefix="$out" -Ddriver_ch=enabled -Ddriver_libvirtd=enabled \
  -Ddriver_remote=enabled "${off[@]}" \
  -Ddocs=disabled -Dtests=disabled -Dnls=disabled -Dexpensive_tests=disabled \
  -Dsecdriver_selinux=disabled -Dsecdriver_apparmor=disabled -Dselinux=disabled \
  -Dapparmor=disabled -Dpolkit=disabled -Dfirewalld=disabled -Dudev=disabled \
  -Dstorage_dir=disabled -Dstorage_fs=disabled >&2
ninja -C build -j"$(nproc)" >&2
ninja -C build install >&2
touch "$out/.complete"
echo "build-libvirt: built libvirt $version in $(( $(date +%s) - start )) s" >&2
echo "$out"
