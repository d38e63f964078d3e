#!/bin/sh
# mkimages.sh: build the two initramfs images the end-to-end harness boots,
# from the cache that fetch.sh fills and the scripts beside this file.
#
#   e2e/mkimages.sh OUTDIR [FILE=DEST]...
#
# OUTDIR/guest.cpio.gz  a test guest: busybox, xen-blkfront and ext4 modules,
#                       mke2fs/e2fsck and xenstore-read with their libraries,
#                       guest/init, faultpat.awk.
# OUTDIR/guestfio.cpio.gz  the speed scenario's guest: busybox, xen-blkfront,
#                       xenstore-read, fio and every library Debian's fio
#                       links, guest/init.
# OUTDIR/kdd.cpio.gz    a storage driver domain whose kernel's xen-blkback
#                       serves: busybox, the Xen, blkback and blkfront
#                       modules, xenstore-*, kdd/init.
# OUTDIR/dom0.cpio.gz   dom0: busybox, xl, xenstored, xenconsoled,
#                       xen-init-dom0, xenstore-*, e2fsprogs, util-linux's
#                       losetup (busybox's cannot set a sector size), the
#                       host's dmsetup (the fault scenario's tables), their
#                       libraries, the Xen, loop, blkback, ext4 and
#                       device-mapper (dm-mod, dm-flakey, dm-delay) modules,
#                       dom0/* scripts, faultpat.awk,
#                       the kernel and the three images above under
#                       /boot, and every
#                       FILE=DEST argument copied to DEST (the blkdom binary,
#                       a driver domain's initramfs).
# Needs root (device nodes), a cache made by fetch.sh ($BLKDOM_E2E_CACHE).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cache=${BLKDOM_E2E_CACHE:-$here/../.cache/e2e}
[ $# -ge 1 ] || { echo "usage: $0 OUTDIR [FILE=DEST]..." >&2; exit 2; }
out=$1
shift
[ -f "$cache/kver" ] || { echo "mkimages.sh: no cache in $cache: run fetch.sh" >&2; exit 1; }
kver=$(cat "$cache/kver")
xroot=$cache/root
xlib=$xroot/usr/lib/x86_64-linux-gnu
xbin=$xroot/usr/lib/xen-4.17/bin
# librados keeps libceph-common in a directory of its own.
libpath=$xlib:$xlib/ceph:$xroot/lib/x86_64-linux-gnu
mkdir -p "$out"
out=$(cd "$out" && pwd)

# skeleton STAGE: directories, device nodes the kernel needs before devtmpfs,
# and busybox with every applet as a symlink.
skeleton() {
	rm -rf "$1"
	mkdir -p "$1"/bin "$1"/sbin "$1"/usr/bin "$1"/usr/sbin "$1"/dev "$1"/proc \
		"$1"/sys "$1"/run "$1"/tmp "$1"/etc "$1"/mnt "$1"/lib/x86_64-linux-gnu "$1"/lib64 \
		"$1"/var/log "$1"/var/lib "$1"/var/lock
	ln -s ../run "$1"/var/run
	mknod -m 600 "$1"/dev/console c 5 1
	mknod -m 666 "$1"/dev/null c 1 3
	cp "$(command -v busybox)" "$1"/bin/busybox
	# Applets where they usually live (the kernel runs /sbin/modprobe), as
	# relative links so that nothing written through one leaves the stage.
	for a in $("$1"/bin/busybox --list-full); do
		case $a in
		bin/busybox) ;;
		bin/*) ln -s busybox "$1/$a" ;;
		sbin/*) ln -s ../bin/busybox "$1/$a" ;;
		usr/*) ln -s ../../bin/busybox "$1/$a" ;;
		esac
	done
}

# put DIR FILE...: copy files into DIR, replacing busybox links of that name.
put() {
	dir=$1
	shift
	for f in "$@"; do
		rm -f "$dir/$(basename "$f")"
		cp "$f" "$dir/"
	done
}

# addlibs STAGE BINARY...: copy the shared libraries the binaries need
# (Xen's from the cache, the rest from the host) into STAGE's /lib.
addlibs() {
	stage=$1
	shift
	if LD_LIBRARY_PATH=$libpath ldd "$@" 2>/dev/null | grep 'not found'; then
		echo "mkimages.sh: libraries of $* not found" >&2
		exit 1
	fi
	LD_LIBRARY_PATH=$libpath ldd "$@" 2>/dev/null |
		awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/lib64\// {print $1}' |
		sort -u | while read -r lib; do
			case $lib in
			/lib64/*) cp -L "$lib" "$stage/lib64/" ;;
			*) cp -L "$lib" "$stage/lib/x86_64-linux-gnu/" ;;
			esac
		done
}

# addmods STAGE MODULE...: copy the modules with their dependencies from the
# cached kernel tree and index them for modprobe.
addmods() {
	stage=$1
	shift
	for m in "$@"; do
		modprobe -d "$xroot" -S "$kver" --show-depends "$m"
	done | awk '$1 == "insmod" {print $2}' | sort -u | while read -r f; do
		rel=${f#*/lib/modules/$kver/}
		mkdir -p "$stage/lib/modules/$kver/$(dirname "$rel")"
		cp "$f" "$stage/lib/modules/$kver/$rel"
	done
	cp "$xroot/lib/modules/$kver/modules.builtin" "$xroot/lib/modules/$kver/modules.builtin.modinfo" \
		"$xroot/lib/modules/$kver/modules.order" \
		"$stage/lib/modules/$kver/"
	depmod -b "$stage" "$kver"
}

# pack STAGE IMAGE: a gzip'd newc cpio archive.
pack() {
	(cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) | gzip -6 >"$2.tmp"
	mv "$2.tmp" "$2"
}

e2fs="/usr/sbin/mke2fs /usr/sbin/e2fsck /usr/sbin/dumpe2fs"
losetup=$(command -v losetup)
dmsetup=$(command -v dmsetup)

# addxenstore STAGE APPLET...: the xenstore tool (over /dev/xen/xenbus in a
# domU) with its libraries, and links naming it as each xenstore-APPLET.
addxenstore() {
	stage=$1
	shift
	cp "$xroot/usr/bin/xenstore" "$stage/usr/bin/"
	for c in "$@"; do
		ln -s xenstore "$stage/usr/bin/xenstore-$c"
	done
	addlibs "$stage" "$xroot/usr/bin/xenstore"
}

# The guest. xenstore-read: dom0's cues to the guest (data/ keys).
g=$out/guest.stage
skeleton "$g"
put "$g/sbin" $e2fs
ln -sf mke2fs "$g/sbin/mkfs.ext4"
cp /etc/mke2fs.conf "$g/etc/"
addxenstore "$g" read
addlibs "$g" $e2fs
addmods "$g" xen-blkfront ext4
install -m 755 "$here/guest/init" "$g/init"
install -m 644 "$here/faultpat.awk" "$g/faultpat.awk"
pack "$g" "$out/guest.cpio.gz"

# The speed scenario's guest: the same init, with fio instead of e2fsprogs
# (a separate image, so that every other guest stays small).
gf=$out/guestfio.stage
skeleton "$gf"
addxenstore "$gf" read
put "$gf/usr/bin" "$xroot/usr/bin/fio"
addlibs "$gf" "$xroot/usr/bin/fio"
addmods "$gf" xen-blkfront
install -m 755 "$here/guest/init" "$gf/init"
pack "$gf" "$out/guestfio.cpio.gz"

# The kernel-blkback driver domain.
k=$out/kdd.stage
skeleton "$k"
addxenstore "$k" read write rm list exists
addmods "$k" xen-evtchn xen-gntdev xenfs xen-blkback xen-blkfront
install -m 755 "$here/kdd/init" "$k/init"
pack "$k" "$out/kdd.cpio.gz"

# Dom0.
d=$out/dom0.stage
skeleton "$d"
mkdir -p "$d/usr/lib/xen-4.17/bin" "$d/etc/xen/scripts" "$d/var/lib/xen" \
	"$d/var/log/xen" "$d/var/lib/xenstored" "$d/boot" "$d/e2e"
# libxl-save-helper: xl save and xl restore run it.
for b in xl xenstored xenconsoled xen-init-dom0 libxl-save-helper; do
	cp "$xbin/$b" "$d/usr/lib/xen-4.17/bin/"
	ln -s "../lib/xen-4.17/bin/$b" "$d/usr/sbin/$b"
done
addxenstore "$d" read write rm ls list exists chmod watch
put "$d/sbin" $e2fs "$losetup" "$dmsetup"
cp /etc/mke2fs.conf "$d/etc/"
addlibs "$d" "$xbin/xl" "$xbin/xenstored" "$xbin/xenconsoled" "$xbin/xen-init-dom0" "$xbin/libxl-save-helper" \
	$e2fs "$losetup" "$dmsetup"
# glibc dlopens libgcc_s for pthread_cancel: xl aborts without it.
cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 "$d/lib/x86_64-linux-gnu/"
addmods "$d" xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs loop xen-blkback ext4 \
	dm-mod dm-flakey dm-delay
install -m 755 "$here/dom0/init" "$d/init"
install -m 755 "$here/dom0/agent" "$here/dom0/steps.sh" "$d/e2e/"
install -m 644 "$here/faultpat.awk" "$d/e2e/"
install -m 755 "$here/dom0/block" "$d/etc/xen/scripts/block"
echo "# xl defaults: none needed by the harness" >"$d/etc/xen/xl.conf"
cp "$cache/vmlinuz" "$d/boot/vmlinuz"
cp "$out/guest.cpio.gz" "$out/guestfio.cpio.gz" "$out/kdd.cpio.gz" "$d/boot/"
# The NFS server and the bridge for the network storage scenarios: the
# server's binaries from the cache (their libraries from the cache and the
# host), the files rpcbind and mountd read, the modules for nfsd, the
# bridge and xen-netback, and the vif hotplug stand-in.
nfsbins="$xroot/sbin/rpcbind $xroot/usr/sbin/rpc.mountd $xroot/usr/sbin/rpc.nfsd
$xroot/usr/sbin/exportfs $xroot/usr/sbin/rpcinfo $xroot/sbin/showmount"
put "$d/usr/sbin" $nfsbins
addlibs "$d" $nfsbins
cp "$xroot/etc/netconfig" /etc/services /etc/protocols /etc/rpc "$d/etc/"
printf 'root:x:0:0:root:/root:/bin/sh\n_rpc:x:100:65534::/run/rpcbind:/bin/false\n' >"$d/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$d/etc/group"
mkdir -p "$d/var/lib/nfs" "$d/srv/nfs"
addmods "$d" sunrpc grace lockd nfs_acl auth_rpcgss nfsd llc stp bridge xen-netback
# The late-reference scenario: tc (iproute2 from the cache) and netem to
# lose and delay packets on a driver domain's vif, and bookworm-backports'
# 6.12 kernel for its second driver domain (its initramfs is given by the
# caller).
put "$d/sbin" "$xroot/sbin/tc"
addlibs "$d" "$xroot/sbin/tc"
addmods "$d" sch_netem
if [ -f "$cache/vmlinuz612" ]; then
	cp "$cache/vmlinuz612" "$d/boot/vmlinuz612"
fi
install -m 755 "$here/dom0/vif-bridge" "$d/etc/xen/scripts/vif-bridge"
for fd in "$@"; do
	src=${fd%%=*}
	dst=${fd#*=}
	mkdir -p "$d/$(dirname "$dst")"
	cp "$src" "$d/$dst"
done
pack "$d" "$out/dom0.cpio.gz"
rm -rf "$g" "$gf" "$k" "$d"
echo "mkimages.sh: $out/dom0.cpio.gz $(wc -c <"$out/dom0.cpio.gz") bytes," \
	"guest.cpio.gz $(wc -c <"$out/guest.cpio.gz") bytes," \
	"guestfio.cpio.gz $(wc -c <"$out/guestfio.cpio.gz") bytes," \
	"kdd.cpio.gz $(wc -c <"$out/kdd.cpio.gz") bytes" >&2
