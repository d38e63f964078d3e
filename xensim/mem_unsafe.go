package xensim

import (
	"unsafe"

	"blkdom/gnttab"

	"golang.org/x/sys/unix"
)

// The memory plumbing of the simulation: mmap and munmap through pointers,
// because unix.Mmap records every mapping in a map (an allocation per call).

// mapPage maps frame of memfd read-write, as a guest sees its own memory.
func mapPage(memfd int, frame uint64) ([]byte, error) {
	p, err := unix.MmapPtr(memfd, int64(frame)*gnttab.PageSize, nil, gnttab.PageSize,
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*byte)(p), gnttab.PageSize), nil
}

// reserve reserves n pages of address space that no access may touch until
// mapFrameAt fills them.
func reserve(n int) ([]byte, error) {
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(n*gnttab.PageSize), unix.PROT_NONE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*byte)(p), n*gnttab.PageSize), nil
}

// mapFrameAt maps frame of memfd over the page at dst[0], which lies in
// a range from reserve.
func mapFrameAt(dst []byte, memfd int, frame uint64, writable bool) error {
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	_, err := unix.MmapPtr(memfd, int64(frame)*gnttab.PageSize, unsafe.Pointer(unsafe.SliceData(dst)),
		gnttab.PageSize, prot, unix.MAP_SHARED|unix.MAP_FIXED)
	return err
}

// unmap unmaps memory from mapPage or reserve.
func unmap(mem []byte) error {
	return unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(mem)), uintptr(len(mem)))
}
