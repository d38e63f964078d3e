#!/bin/sh
# vmtest.sh [go test flags]: run this package's tests on Debian 12's own
# kernel (6.1, the kernel of blkdom's Xen domains), booted under QEMU with
# software emulation. The host's kernel is newer; this proves that the one
# committed BPF object relocates and verifies on both (skb fragments are
# bio_vecs in 6.1, netmem in newer kernels), and, because Debian's kernel has
# kprobes and a grant table, that the grant-table kprobes attach.
#
# The kernel comes from the end-to-end harness's cache (e2e/fetch.sh, run if
# the cache is empty; BLKDOM_E2E_CACHE moves it). The VM gets an initramfs
# with busybox, nft and its libraries, the nf_tables modules and the test
# binary; it runs the tests and powers off. Exit status: the tests'.
#
#   ebpf/vmtest.sh                 all tests
#   ebpf/vmtest.sh -test.run Late  some
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${BLKDOM_E2E_CACHE:-$repo/.cache/e2e}
if [ ! -f "$cache/vmlinuz" ] || [ ! -f "$cache/kver" ]; then
	"$repo/e2e/fetch.sh"
fi
for tool in qemu-system-x86_64:qemu-system-x86 cpio:cpio nft:nftables; do
	command -v "${tool%%:*}" >/dev/null || {
		echo "vmtest.sh: needs ${tool#*:}" >&2
		exit 1
	}
done
kver=$(cat "$cache/kver")
modules=$cache/root/lib/modules/$kver

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/bin" "$root/usr/sbin" "$root/modules" "$root/proc" "$root/sys" \
	"$root/dev" "$root/tmp"

cp "$(command -v busybox)" "$root/bin/busybox"
(cd "$repo" && CGO_ENABLED=0 go test -c -o "$root/ebpf.test" ./ebpf)

# nft and the shared libraries it loads, at the same paths.
cp /usr/sbin/nft "$root/usr/sbin/nft"
for lib in $(ldd /usr/sbin/nft | awk '/=> \// {print $3} /^\t\/lib/ {print $1}'); do
	mkdir -p "$root$(dirname "$lib")"
	cp -L "$lib" "$root$lib"
done

# nf_tables and what it needs, in load order.
n=0
for ko in crypto/crc32c_generic lib/libcrc32c net/netfilter/nfnetlink net/netfilter/nf_tables; do
	n=$((n + 1))
	cp "$modules/kernel/$ko.ko" "$root/modules/$n-$(basename "$ko").ko"
done

cat >"$root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/sbin HOME=/tmp TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
for m in /modules/*.ko; do insmod "\$m" || echo "vmtest: insmod \$m failed"; done
echo "vmtest: kernel \$(uname -r)"
cd /tmp && /ebpf.test -test.v -test.count=1 $*
echo "vmtest: exit \$?"
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"

timeout 900 qemu-system-x86_64 -machine pc -accel tcg -cpu Haswell-noTSX -smp 2 -m 1536 \
	-nographic -no-reboot -net none -monitor none \
	-kernel "$cache/vmlinuz" -initrd "$work/initrd.gz" \
	-append "console=ttyS0 panic=-1 quiet" | tee "$work/console" | tr -d '\r'
status=$(sed -n 's/^vmtest: exit \([0-9]*\).*/\1/p' "$work/console" | tail -1)
if [ -z "$status" ]; then
	echo "vmtest.sh: the tests did not finish" >&2
	exit 1
fi
exit "$status"
