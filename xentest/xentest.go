// Package xentest helps tests that run on real Xen (scripts/vmtest.sh runs
// them in a PV dom0 under QEMU): it grants pages of this domain to itself
// through Linux's /dev/xen/gntalloc, the frontend's side of a grant, so a
// test can map them back as a backend does. Elsewhere its helpers skip the
// test.
package xentest

import (
	"os"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"blkdom/gnttab"
)

// AllocPath is Linux's grant-allocating device.
const AllocPath = "/dev/xen/gntalloc"

// SelfDomain is this domain's id: BLKDOM_SELF_DOMID, default 0 (dom0, where
// scripts/vmtest.sh runs the tests).
func SelfDomain(t testing.TB) uint32 {
	t.Helper()
	s := os.Getenv("BLKDOM_SELF_DOMID")
	if s == "" {
		return 0
	}
	v, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		t.Fatalf("BLKDOM_SELF_DOMID: %v", err)
	}
	return uint32(v)
}

// SelfGrants grants n pages (at most gnttab.MaxBatch) of this domain to
// itself, writable or read-only, and returns the domain, the grant
// references and the granting side's view of the pages (n*gnttab.PageSize
// bytes, zeroed). The test's cleanup ends the grants. It skips the test
// where there is no Xen.
func SelfGrants(t testing.TB, n int, writable bool) (dom uint32, refs []gnttab.Ref, mem []byte) {
	t.Helper()
	if _, err := os.Stat(gnttab.DevicePath); err != nil {
		t.Skipf("no Xen here: %v", err)
	}
	dom = SelfDomain(t)
	fd, err := unix.Open(AllocPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	arg := &allocArg{domid: uint16(dom), count: uint32(n)}
	if writable {
		arg.flags = allocWritable
	}
	if err := ioctl(fd, ioctlAlloc, arg); err != nil {
		unix.Close(fd)
		t.Fatalf("gntalloc %d pages: %v", n, err)
	}
	if mem, err = unix.Mmap(fd, int64(arg.index), n*gnttab.PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Munmap(mem)
		ioctl(fd, ioctlDealloc, &deallocArg{index: arg.index, count: uint32(n)})
		unix.Close(fd)
	})
	for _, r := range arg.refs[:n] {
		refs = append(refs, gnttab.Ref(r))
	}
	return dom, refs, mem
}
