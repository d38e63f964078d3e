#!/bin/sh
# fetch.sh: download the Debian packages the end-to-end harness boots (Xen
# 4.17, its tools and libraries, a Debian 6.1 kernel) into a cache directory
# and unpack them there; nothing is installed on the host.
#
#   e2e/fetch.sh            cache in $BLKDOM_E2E_CACHE (default <repo>/.cache/e2e)
#
# Layout of the cache:
#   debs/    the downloaded .deb files
#   root/    every package unpacked with dpkg-deb -x (one tree)
#   kver     the kernel release of the Debian 12 kernel (depmod already run)
#   kver612  the release of bookworm-backports' 6.12 kernel, unpacked in the
#            same root/ (its modules beside the 6.1 ones, depmod run; only
#            driver domains boot it, in the late-reference scenario)
#   bpo/     a private apt source list and package lists for bookworm-backports
#            (the host's own sources stay untouched)
#   xen.elf  the hypervisor, uncompressed (QEMU's multiboot loader needs ELF)
#   vmlinuz  the kernel image (dom0 and guests boot the same one)
#   vmlinuz612  the 6.12 kernel's image
# Besides Xen and the kernel: fio and the shared libraries Debian's build
# links it with (librados, librbd, libgfapi, ... and what those need beyond a
# minimal Debian), for the speed scenario's guest.
# A stamp file makes a second run a no-op; delete the cache to refetch.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cache=${BLKDOM_E2E_CACHE:-$here/../.cache/e2e}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

# Host tools the harness runs (QEMU, the busybox binary copied into every
# initramfs, cpio, depmod/modprobe, mke2fs/e2fsck and util-linux's losetup
# copied into the images, and dmsetup for the fault scenario's dom0).
missing=
for pair in qemu-system-x86_64:qemu-system-x86 busybox:busybox-static cpio:cpio \
	depmod:kmod mke2fs:e2fsprogs losetup:mount ldd:libc-bin dmsetup:dmsetup; do
	command -v "${pair%%:*}" >/dev/null 2>&1 || missing="$missing ${pair#*:}"
done
# busybox must be the static build: it is copied into images without libraries.
if command -v busybox >/dev/null 2>&1 && readelf -l "$(command -v busybox)" 2>/dev/null | grep -q INTERP; then
	missing="$missing busybox-static"
fi
if [ -n "$missing" ]; then
	echo "fetch.sh: installing host packages:$missing" >&2
	apt-get install -y --no-install-recommends $missing >&2
fi

stamp=$cache/.fetched-v4
if [ -f "$stamp" ]; then
	exit 0
fi

# The kernel: whatever linux-image-amd64 currently points at.
kdep() {
	apt-cache "$@" depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
kpkg=$(kdep)
if [ -z "$kpkg" ]; then
	echo "fetch.sh: cannot resolve linux-image-amd64 (run apt-get update)" >&2
	exit 1
fi

pkgs="xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common xenstore-utils
libxencall1 libxenevtchn1 libxenforeignmemory1 libxengnttab1 libxenmisc4.17
libxenstore4 libxentoollog1 libyajl2 libxendevicemodel1 libxenhypfs1 libxentoolcore1
$kpkg
fio libaio1 libnuma1 libgfapi0 libglusterfs0 libgfrpc0 libgfxdr0 libibverbs1 librdmacm1
libnbd0 libpmem1 libpmemblk1 libndctl6 libdaxctl1 librados2 librbd1 libfmt9 libtirpc3
libboost-iostreams1.74.0 libboost-thread1.74.0 libnl-3-200 libnl-route-3-200
libxml2 libicu72 libcryptsetup12 libdevmapper1.02.1 libargon2-1 libjson-c5 libssl3
libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1"
# The NFS server in dom0 (network storage scenarios).
pkgs="$pkgs nfs-kernel-server nfs-common rpcbind libtirpc-common libwrap0"
# tc for dom0 (packet loss on a vif in the late-reference scenario).
pkgs="$pkgs iproute2 libbpf1 libelf1 libmnl0 libbsd0 libcap2 libxtables12 libmd0"

mkdir -p "$cache/debs"
need=
for p in $pkgs; do
	ls "$cache/debs/${p}_"*.deb >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
	(cd "$cache/debs" && apt-get download $need)
fi

# The 6.12 kernel: the newest linux-image-amd64 of bookworm-backports, through
# a source list of its own (apt's options point every path it writes into
# bpo/). A .deb of a 6.12 kernel already in debs/ is kept.
if ! ls "$cache/debs/linux-image-6.12."*.deb >/dev/null 2>&1; then
	bpo=$cache/bpo
	mkdir -p "$bpo/lists/partial" "$bpo/cache/archives/partial"
	echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$bpo/sources.list"
	set -- -o Dir::Etc::SourceList="$bpo/sources.list" -o Dir::Etc::SourceParts=/dev/null \
		-o Dir::State::Lists="$bpo/lists" -o Dir::Cache="$bpo/cache" \
		-o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o Dir::State::status=/dev/null
	apt-get "$@" update >&2
	bpokpkg=$(kdep "$@")
	case "$bpokpkg" in
	linux-image-6.12.*) ;;
	*)
		echo "fetch.sh: bookworm-backports' linux-image-amd64 is not 6.12: '$bpokpkg'" >&2
		exit 1
		;;
	esac
	(cd "$cache/debs" && apt-get "$@" download "$bpokpkg")
fi

rm -rf "$cache/root"
mkdir -p "$cache/root"
for d in "$cache"/debs/*.deb; do
	dpkg-deb -x "$d" "$cache/root"
done

kver=$(ls "$cache/root/lib/modules" | grep '^6\.1\.' | head -n1)
kver612=$(ls "$cache/root/lib/modules" | grep '^6\.12\.' | head -n1)
depmod -b "$cache/root" "$kver"
depmod -b "$cache/root" "$kver612"
echo "$kver" >"$cache/kver"
echo "$kver612" >"$cache/kver612"
cp "$cache/root/boot/vmlinuz-$kver" "$cache/vmlinuz"
cp "$cache/root/boot/vmlinuz-$kver612" "$cache/vmlinuz612"
zcat "$cache/root/boot/xen-4.17-amd64.gz" >"$cache/xen.elf"
touch "$stamp"
echo "fetch.sh: cache ready in $cache (kernel $kver)" >&2
