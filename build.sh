#!/bin/sh
# build.sh: build blkdom as a static, stripped binary at out/blkdom.
#   ./build.sh                 the binary only
#   ./build.sh initramfs       also out/blkdom-initramfs.cpio.gz for Debian's
#                              current kernel (scripts/kernel.sh fetches it
#                              into .cache/ once), and out/vmlinuz
set -eu
cd "$(dirname "$0")"
mkdir -p out
version=$(git describe --always --dirty 2>/dev/null || echo dev)
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$version" -o out/blkdom .
# A driver domain's /init must not need a dynamic loader: refuse anything else.
if readelf -l out/blkdom | grep -q INTERP; then
	echo "build.sh: out/blkdom has a program interpreter: not static" >&2
	exit 1
fi
echo "out/blkdom: $(wc -c <out/blkdom) bytes, static"
case "${1:-}" in
"") ;;
initramfs)
	kernel=$(scripts/kernel.sh)
	kver=$(cat "$kernel/version")
	out/blkdom initramfs -binary out/blkdom -modules "$kernel/lib/modules/$kver" \
		-output out/blkdom-initramfs.cpio.gz
	cp "$kernel/boot/vmlinuz-$kver" out/vmlinuz
	echo "out/blkdom-initramfs.cpio.gz, out/vmlinuz: Linux $kver"
	;;
*)
	echo "usage: ./build.sh [initramfs]" >&2
	exit 2
	;;
esac
