#!/bin/sh
# test.sh: the whole test suite, from a fresh Debian machine.
# Installs what it needs (scripts/deps.sh), checks formatting, vet and
# staticcheck, runs the unit and simulation tests, then the tests on real
# kernels: the eBPF probes on this one, the initramfs boot under QEMU, and
# the end-to-end run with real Xen and a real Linux guest under QEMU.
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
BLKDOM_CHECK_GEN=1 BLKDOM_BOOTTEST=1 BLKDOM_E2E=1 go test -count=1 -timeout 75m ./...
