package ebpf

import "unsafe"

// addrOf is the virtual address of b's first byte, to look up in
// /proc/self/pagemap.
func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
