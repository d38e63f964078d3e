#!/bin/sh
# deps.sh: install every Debian package and Go tool that building and
# testing blkdom needs, and nothing when all of it is there already.
# Called by test.sh; safe to run again.
set -eu
# The tools whose absence means "install": one command per package.
need=""
for pair in \
	xenstore-read:xenstore-utils \
	qemu-system-x86_64:qemu-system-x86 \
	busybox:busybox-static \
	cpio:cpio \
	depmod:kmod \
	mkfs.ext4:e2fsprogs \
	nft:nftables \
	ip:iproute2 \
	clang-14:clang-14 \
	llvm-strip-14:llvm-14 \
	readelf:binutils \
	dpkg-deb:dpkg \
	zstd:zstd \
	xz:xz-utils \
	losetup:mount \
	dmsetup:dmsetup \
	strace:strace; do
	command -v "${pair%%:*}" >/dev/null 2>&1 || need="$need ${pair#*:}"
done
[ -f /usr/include/bpf/bpf_helpers.h ] || need="$need libbpf-dev"
# scripts/kernel.sh and e2e/fetch.sh download with apt-get: they need lists.
if [ -n "$need" ] || ! ls /var/lib/apt/lists/*Packages* >/dev/null 2>&1; then
	apt-get update -qq
fi
if [ -n "$need" ]; then
	echo "deps.sh: installing$need"
	export DEBIAN_FRONTEND=noninteractive
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $need
fi
# staticcheck, pinned, from the Go module proxy.
gobin=$(go env GOPATH)/bin
if [ ! -x "$gobin/staticcheck" ]; then
	GOFLAGS=-mod=mod go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi
