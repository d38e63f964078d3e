package xentest

import (
	"unsafe"

	"golang.org/x/sys/unix"

	"blkdom/gnttab"
)

// gntalloc's ioctls (include/uapi/xen/gntalloc.h): _IOC(_IOC_NONE, 'G', nr,
// sizeof(argument)); layout_unsafe_test.go recomputes them.
const (
	ioctlAlloc    = 0x00184705
	ioctlDealloc  = 0x00104706
	allocWritable = 1 // GNTALLOC_FLAG_WRITABLE
)

// allocArg is struct ioctl_gntalloc_alloc_gref with room for MaxBatch refs.
type allocArg struct {
	domid uint16
	flags uint16
	count uint32
	index uint64 // out: the mmap offset
	refs  [gnttab.MaxBatch]uint32
}

// deallocArg is struct ioctl_gntalloc_dealloc_gref.
type deallocArg struct {
	index uint64
	count uint32
	_     uint32
}

func ioctl[T any](fd int, req uintptr, arg *T) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(arg))); e != 0 {
		return e
	}
	return nil
}
