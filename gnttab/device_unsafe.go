package gnttab

import (
	"encoding/binary"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The lines of the gntdev driver that need unsafe: the ioctl arguments'
// addresses, the mapped range as a slice, and a local buffer's address in
// a copy segment.

// ioctl issues a gntdev ioctl whose argument is *arg, a field of the
// Device, so it stays put and alive while the kernel uses it.
func ioctl[T any](fd int, req uintptr, arg *T) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(arg)))
	if e != 0 {
		return e
	}
	return nil
}

// mmap maps size bytes of the device at offset, shared. (unix.Mmap would
// also record the mapping in a table under a global lock.)
func mmap(fd int, offset int64, size, prot int) ([]byte, error) {
	p, err := unix.MmapPtr(fd, offset, nil, uintptr(size), prot, unix.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*byte)(p), size), nil
}

// munmap unmaps a range mmap returned.
func munmap(mem []byte) error {
	return unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(mem)), uintptr(len(mem)))
}

// localAddr is a copy segment's side that names b in this process.
func localAddr(b []byte) (a copyAddr) {
	binary.NativeEndian.PutUint64(a[:], uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))))
	return a
}

// copyBatch issues GRANT_COPY for the first k of d.copySegs.
func (d *Device) copyBatch(k int) error {
	d.copyArg = grantCopy{count: uint32(k), segments: uintptr(unsafe.Pointer(&d.copySegs[0]))}
	return ioctl(d.fd, ioctlGrantCopy, &d.copyArg)
}
