#!/bin/sh
# test.sh: the whole test suite, from a fresh Debian machine.
# Installs what it needs (scripts/deps.sh), checks formatting, vet and
# staticcheck, runs the unit and simulation tests (with the eBPF probes on
# this kernel), then the tests under QEMU one after the other: the
# initramfs booting without Xen, and the end-to-end run with real Xen 4.17,
# a Linux dom0 and Linux guests.
set -eu
cd "$(dirname "$0")"
scripts/deps.sh
export PATH="$PATH:$(go env GOPATH)/bin"

unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
	echo "test.sh: not gofmt'ed: $unformatted" >&2
	exit 1
fi
go vet ./...
staticcheck ./...
./build.sh
BLKDOM_CHECK_GEN=1 go test -count=1 -timeout 20m ./...
BLKDOM_BOOTTEST=1 go test -count=1 -timeout 20m ./boottest
# Fio jobs of 10 s in the suite (bench.sh measures 15 s) keep it within
# its 40 minutes.
BLKDOM_E2E=1 BLKDOM_E2E_FIO_SECONDS=${BLKDOM_E2E_FIO_SECONDS:-10} go test -count=1 -timeout 60m ./e2e
# The probes on real grants in a PV dom0, on both kernels of the
# late-reference scenario (TestLateRef): grants mapped with gntdev and sent
# by reference (MSG_ZEROCOPY) count in flight, then late once completed.
for k in 6.1 6.12; do
	VMTEST_KERNEL=$k scripts/vmtest.sh ebpf -test.run XenGrantTable
done
# The numbers the end-to-end run measured (sizes, boot and I/O timings,
# what blkdom stat read from dom0).
echo "e2e metrics:"
cat .cache/e2e/run/metrics.txt 2>/dev/null || echo "(no metrics file)"
