#!/bin/sh
# build.sh: build blkdom as a static, stripped binary at out/blkdom.
#   ./build.sh                 the binary only
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
