#!/bin/sh
# vmtest.sh PKG [go test flags]: run a package's tests (ebpf, gnttab,
# blkback/platformtest: the platform contract on Linux's devices) in a
# Xen dom0 running Debian 12's own kernel (6.1, the kernel of blkdom's Xen
# domains), booted under QEMU with software emulation: a paravirtualised
# domain, like a storage driver domain. The host's kernel is newer and not
# Xen's. For ebpf this proves that the one committed BPF object relocates
# and verifies on both (skb fragments are bio_vecs in 6.1, netmem in newer
# kernels), and it is where TestXenGrantTable runs: the grant-table kprobes
# learn real grants, which the tests map with gntdev and send with
# MSG_ZEROCOPY. For gnttab it runs the Xen tests and, with -test.bench,
# measures what mapping grants costs per page on real Xen.
#
# Xen and the kernel come from the end-to-end harness's cache (e2e/fetch.sh,
# run if the cache is empty; BLKDOM_E2E_CACHE moves it). Dom0 gets an
# initramfs with busybox, nft and its libraries, the nf_tables, gntdev,
# gntalloc, configfs and null_blk modules and the test binary; it runs the
# tests and the script stops the VM. Exit status: the tests', and for ebpf
# 1 if TestXenGrantTable did not pass.
#
#   scripts/vmtest.sh ebpf                  all of ebpf's tests
#   scripts/vmtest.sh ebpf -test.run Late   some
#   scripts/vmtest.sh gnttab -test.run Xen -test.bench XenMap
#
# VMTEST_PROFILE=FILE also writes the tests' CPU profile (-test.cpuprofile)
# to FILE, for go tool pprof: how the code spends a PV domain's CPU, e.g.
#   VMTEST_PROFILE=pv.prof scripts/vmtest.sh blkback -test.run X -test.bench Request/io_uring
# The machine is the e2e harness's (e2e/vm_test.go): Haswell-noTSX with an
# invariant TSC and Xen's clocksource=tsc, so the domains read the clock in
# the vDSO; VMTEST_CLOCK=hpet boots it without (BLKDOM_E2E_CLOCK=hpet there).
# VMTEST_KERNEL=6.12 boots dom0 on bookworm-backports' 6.12 instead (the
# late-reference scenario's second kernel, from the same cache).
# VMTEST_BASE=REV also builds the package's tests at git revision REV and
# runs both in the same boot, VMTEST_ROUNDS times (default 3), taking
# turns in alternating order (base first in odd rounds): a comparison in
# one boot, free of the drift between boots and of the order's bias. The
# two outputs go to base.txt and test.txt in VMTEST_AB_DIR (default the
# current directory), for benchstat base.txt test.txt, e.g.
#   VMTEST_BASE=main scripts/vmtest.sh blkback -test.run '^$' -test.bench Request/io_uring
set -eu

[ $# -ge 1 ] || { echo "usage: $0 PKG [go test flags]" >&2; exit 2; }
pkg=$1
shift
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
case ${VMTEST_KERNEL:-6.1} in
6.1) vmlinuz=$cache/vmlinuz kver=$(cat "$cache/kver") ;;
6.12) vmlinuz=$cache/vmlinuz612 kver=$(cat "$cache/kver612") ;;
*)
	echo "vmtest.sh: VMTEST_KERNEL is 6.1 or 6.12" >&2
	exit 2
	;;
esac
modules=$cache/root/lib/modules/$kver

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/bin" "$root/usr/sbin" "$root/modules" "$root/proc" "$root/sys" \
	"$root/dev" "$root/tmp"

cp "$(command -v busybox)" "$root/bin/busybox"
(cd "$repo" && CGO_ENABLED=0 go test -c -o "$root/pkg.test" "./$pkg")
rounds=1 runs=1 # runs: test binaries run in the boot, 15 minutes each at most
if [ -n "${VMTEST_BASE:-}" ]; then
	mkdir "$work/base"
	git -C "$repo" archive "$VMTEST_BASE" | tar -x -C "$work/base"
	(cd "$work/base" && CGO_ENABLED=0 go test -c -o "$root/base.test" "./$pkg")
	rounds=${VMTEST_ROUNDS:-3} runs=$((2 * ${VMTEST_ROUNDS:-3}))
fi

# nft and the shared libraries it loads, at the same paths.
cp /usr/sbin/nft "$root/usr/sbin/nft"
for lib in $(ldd /usr/sbin/nft | awk '/=> \// {print $3} /^\t\/lib/ {print $1}'); do
	mkdir -p "$root$(dirname "$lib")"
	cp -L "$lib" "$root$lib"
done

# nf_tables and what it needs, in load order.
n=0
for ko in crypto/crc32c_generic lib/libcrc32c net/netfilter/nfnetlink net/netfilter/nf_tables \
	drivers/xen/xen-evtchn drivers/xen/xen-gntdev drivers/xen/xen-gntalloc \
	fs/configfs/configfs drivers/block/null_blk/null_blk; do
	n=$((n + 1))
	to=$root/modules/$n-$(basename "$ko").ko
	if [ -f "$modules/kernel/$ko.ko.xz" ]; then
		xz -dc "$modules/kernel/$ko.ko.xz" >"$to" # 6.12's, for busybox insmod
	else
		cp "$modules/kernel/$ko.ko" "$to"
	fi
done

# The arguments, quoted for the init script.
args=
[ -z "${VMTEST_PROFILE:-}" ] || args=" -test.cpuprofile=/tmp/cpu.prof"
for a in "$@"; do
	args="$args '$(printf %s "$a" | sed "s/'/'\\\\''/g")'"
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
cd /tmp
rc=0
if [ -x /base.test ]; then
	for round in \$(seq $rounds); do
		order="base pkg"
		[ \$((round % 2)) = 0 ] && order="pkg base"
		for t in \$order; do
			echo "vmtest: == \$t round \$round"
			/\$t.test -test.v -test.count=1$args || rc=1
		done
	done
else
	/pkg.test -test.v -test.count=1$args || rc=1
fi
if [ -f /tmp/cpu.prof ]; then
	echo "vmtest: profile"
	base64 /tmp/cpu.prof
	echo "vmtest: profile end"
fi
echo "vmtest: exit \$rc"
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"

console=$work/console
cpu=Haswell-noTSX,-pcid,-x2apic,-tsc-deadline,-invpcid,+invtsc,x-force-features=on
clock=clocksource=tsc
if [ "${VMTEST_CLOCK:-}" = hpet ]; then
	cpu=Haswell-noTSX clock=
fi
qemu-system-x86_64 -machine pc -accel tcg -cpu "$cpu" -smp 2 -m 2048 \
	-nographic -no-reboot -net none -monitor none \
	-kernel "$cache/xen.elf" \
	-append "console=com1 com1=115200,8n1 dom0_mem=1536M,max:1536M dom0_max_vcpus=2 noreboot xpti=false pv-l1tf=false $clock" \
	-initrd "$vmlinuz console=hvc0 quiet,$work/initrd.gz" >"$console" 2>&1 &
qemu=$!
deadline=$(($(date +%s) + 900 * runs))
while kill -0 "$qemu" 2>/dev/null && ! grep -q -e '^vmtest: exit' -e '^(XEN) Panic on CPU' "$console" &&
	[ "$(date +%s)" -lt "$deadline" ]; do
	sleep 1
done
sleep 1
kill "$qemu" 2>/dev/null || true
wait "$qemu" 2>/dev/null || true
tr -d '\r' <"$console" | sed -n '/^vmtest: /,$p' | sed '/^vmtest: profile$/,/^vmtest: profile end$/d'
status=$(tr -d '\r' <"$console" | sed -n 's/^vmtest: exit \([0-9]*\).*/\1/p' | tail -1)
if [ -n "${VMTEST_PROFILE:-}" ]; then
	tr -d '\r' <"$console" | sed -n '/^vmtest: profile$/,/^vmtest: profile end$/p' | sed '1d;$d' |
		base64 -d >"$VMTEST_PROFILE" && echo "vmtest.sh: CPU profile in $VMTEST_PROFILE"
fi
if [ -n "${VMTEST_BASE:-}" ]; then
	ab=${VMTEST_AB_DIR:-.}
	tr -d '\r' <"$console" | awk -v base="$ab/base.txt" -v test="$ab/test.txt" '
		/^vmtest: == base / { out = base; next }
		/^vmtest: == pkg / { out = test; next }
		/^vmtest: / { out = ""; next }
		out != "" { print > out }'
	echo "vmtest.sh: $VMTEST_BASE in $ab/base.txt, the working tree in $ab/test.txt"
fi
if [ -z "$status" ]; then
	tail -40 "$console" >&2
	echo "vmtest.sh: the tests did not finish" >&2
	exit 1
fi
# Without a test selection, the test that needs Xen must have run, not
# skipped: ebpf's TestXenGrantTable, blkback/platformtest's TestLinux.
case "$pkg" in
ebpf) want=TestXenGrantTable ;;
blkback/platformtest) want=TestLinux ;;
*) want= ;;
esac
case " $* " in *" -test.run"*) want= ;; esac
if [ -n "$want" ] && ! tr -d '\r' <"$console" | grep -q "^--- PASS: $want"; then
	echo "vmtest.sh: $want did not pass" >&2
	[ "$status" != 0 ] || status=1
fi
exit "$status"
