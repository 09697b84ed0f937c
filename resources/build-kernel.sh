#!/usr/bin/env bash
# Builds the guest kernel (bzImage and vmlinux) from Debian's linux-source-6.1 package with
# resources/kernel/microvm.config merged on top of tinyconfig. The result is cached under
# $VMM_CACHE_DIR (default /var/cache/vmm) in a directory named by a hash of every input, so it
# is rebuilt only when the config, this script or the source package changes.
# Prints the directory holding bzImage and vmlinux on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${VMM_CACHE_DIR:-/var/cache/vmm}
src_tar=/usr/src/linux-source-6.1.tar.xz

need_pkgs=()
[ -f "$src_tar" ] || need_pkgs+=(linux-source-6.1)
for tool in bc flex bison make gcc; do command -v "$tool" >/dev/null || need_pkgs+=("$tool"); done
[ -f /usr/include/libelf.h ] || need_pkgs+=(libelf-dev)
[ -f /usr/include/openssl/ssl.h ] || need_pkgs+=(libssl-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "build-kernel: installing ${need_pkgs[*]}" >&2
  "$here/apt-install.sh" "${need_pkgs[@]}" >&2
fi

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( (cat "$here/kernel/microvm.config" "$0"; echo "$src_version") | sha256sum | cut -c1-16)
out="$cache/kernel-$key"
if [ -f "$out/bzImage" ] && [ -f "$out/vmlinux" ]; then
  echo "build-kernel: cached $out" >&2
  echo "$out"
  exit 0
fi

work="$cache/kernel-build-$key"
# Leftovers of interrupted builds (of any config) only take space.
rm -rf "$cache"/kernel-build-* "$out.tmp"
mkdir -p "$work"
trap 'rm -rf "$work" "$out.tmp"' EXIT
echo "build-kernel: unpacking linux-source $src_version" >&2
tar -C "$work" -xf "$src_tar"
cd "$work"/linux-source-6.1
start=$(date +%s)
make -s tinyconfig >&2
./scripts/kconfig/merge_config.sh -m .config "$here/kernel/microvm.config" >/dev/null
make -s olddefconfig >&2
# Every option the fragment sets must have survived the dependency resolution.
missing=0
while IFS= read -r line; do
  case "$line" in CONFIG_*=n) opt=${line%%=*}; grep -q "^$opt=" .config && { echo "build-kernel: $opt still set" >&2; missing=1; } ;;
    CONFIG_*) grep -qx "$line" .config || { echo "build-kernel: $line did not stick" >&2; missing=1; } ;; esac
done < "$here/kernel/microvm.config"
[ $missing -eq 0 ] || exit 1
echo "build-kernel: compiling (this takes several minutes)" >&2
make -s -j"$(nproc)" bzImage >&2
mkdir -p "$out.tmp"
cp arch/x86/boot/bzImage vmlinux .config "$out.tmp/"
rm -rf "$out"
mv "$out.tmp" "$out"
cd /
rm -rf "$work"
echo "build-kernel: built in $(( $(date +%s) - start )) s" >&2
echo "$out"
