#!/bin/sh
# kernel.sh: make Debian's current amd64 kernel available to build.sh and the
# boot test, and print the directory that holds it.
#
# It downloads the package that linux-image-amd64 depends on (apt-get
# download; no install), unpacks it with dpkg-deb -x and runs depmod -b, all
# in .cache/kernel/<package>/ of the repository, and does nothing when that
# directory is already complete. The directory printed holds:
#   boot/vmlinuz-<version>       the kernel
#   lib/modules/<version>/       its modules, with modules.dep
# and a file "version" with <version> in it.
#
# Needs: apt (apt-get update having run once), dpkg, kmod (depmod).
set -eu
cd "$(dirname "$0")/.."
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
	sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1)
if [ -z "$pkg" ]; then
	echo "kernel.sh: apt-cache knows no linux-image-amd64 (run apt-get update)" >&2
	exit 1
fi
dir=$PWD/.cache/kernel/$pkg
if [ ! -f "$dir/version" ]; then
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/blkdom-kernel.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && apt-get download -o APT::Sandbox::User=root "$pkg" >&2)
	mkdir -p "$tmp/root"
	dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/root"
	ver=$(ls "$tmp/root/lib/modules")
	depmod -b "$tmp/root" "$ver"
	echo "$ver" >"$tmp/root/version"
	mkdir -p "$(dirname "$dir")"
	rm -rf "$dir"
	mv "$tmp/root" "$dir"
fi
echo "$dir"
