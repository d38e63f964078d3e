#!/bin/sh
# gen.sh [OUTDIR]: compile the probes' C sources with bpf2go and write the BPF
# objects and their Go bindings to OUTDIR (default: this directory, where they
# are committed so that blkdom builds with CGO_ENABLED=0 and no clang).
#
# Output is byte-for-byte reproducible only with the same compiler and
# headers, so the toolchain is pinned to Debian 12's packages: clang-14
# (14.0.6) with llvm-strip-14, and libbpf-dev 1.1.2 for bpf_helpers.h. This
# script installs them when they are missing and refuses other versions.
# TestGeneratedUpToDate runs it into a temporary directory and compares.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
mkdir -p "$out"
out=$(cd "$out" && pwd)

clang_version=14.0.6
libbpf_version=1:1.1.2-0+deb12u1

if ! command -v clang-14 >/dev/null || ! command -v llvm-strip-14 >/dev/null ||
	[ ! -e /usr/include/bpf/bpf_helpers.h ]; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		clang-14 llvm-14 libbpf-dev >&2
fi

got=$(clang-14 --version | sed -n 's/.*clang version \([0-9.]*\).*/\1/p')
if [ "$got" != "$clang_version" ]; then
	echo "gen.sh: need clang $clang_version for reproducible objects, have $got" >&2
	exit 1
fi
got=$(dpkg-query -W -f '${Version}' libbpf-dev)
if [ "$got" != "$libbpf_version" ]; then
	echo "gen.sh: need libbpf-dev $libbpf_version for reproducible objects, have $got" >&2
	exit 1
fi

# bpf2go records source paths relative to the working directory.
cd "$here"
bpf2go() {
	GOPACKAGE=ebpf go run github.com/cilium/ebpf/cmd/bpf2go \
		-cc clang-14 -strip llvm-strip-14 -target amd64 -output-dir "$out" "$@"
}
bpf2go -type event probes probes.c -- -Wall -Werror
bpf2go -output-suffix _test learn learn.c -- -Wall -Werror

# Package ebpf is this one: its files import cilium/ebpf as cilium, so that a
# reader knows which ebpf.Program is meant; the generated bindings follow.
for f in "$out/probes_x86_bpfel.go" "$out/learn_x86_bpfel_test.go"; do
	sed -i -e 's|^	"github.com/cilium/ebpf"$|	cilium "github.com/cilium/ebpf"|' \
		-e 's/\bebpf\./cilium./g' "$f"
done
