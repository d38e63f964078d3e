package blkif

import "unsafe"

// IndexesOf returns the index header at the start of a mapped ring. mem is
// at least one page, page aligned.
func IndexesOf(mem []byte) *Indexes {
	return (*Indexes)(unsafe.Pointer(unsafe.SliceData(mem)))
}
