// Package gnttab maps pages that other domains granted to this one.
//
// A frontend shares memory with blkdom by granting pages: each grant is named
// by the granting domain and a grant reference. Device (Linux's
// /dev/xen/gntdev) maps a batch of grants into one contiguous range of this
// process's memory so that I/O can go straight into the guest's pages, and
// copies between grants and local buffers where mapping is unsafe.
//
// gnttab owns the kernel interface only; which grants to map, and for how
// long, is the caller's business. The simulated grant table used by tests
// and the demo lives in package xensim and has the same method set.
package gnttab

// PageSize is the size of one granted frame.
const PageSize = 4096

// Ref is a grant reference: an index into the granting domain's grant table.
type Ref uint32

// Mapping is a contiguous run of mapped grants. Mem covers exactly the
// mapped pages; Index is the handle the mapper needs to unmap them.
type Mapping struct {
	Mem   []byte
	Index uint64
}
