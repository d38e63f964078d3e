package blkback

import (
	"unsafe"

	"golang.org/x/sys/unix"

	"blkdom/gnttab"
)

// preadv and pwritev issue one vectored transfer with the iovecs as given.
// x/sys/unix's wrappers take [][]byte and build an iovec slice per call;
// these take the slot's prebuilt iovecs so the data path allocates nothing.
func preadv(fd int, iov []unix.Iovec, off int64) (int, error) {
	return vectored(unix.SYS_PREADV, fd, iov, off)
}

func pwritev(fd int, iov []unix.Iovec, off int64) (int, error) {
	return vectored(unix.SYS_PWRITEV, fd, iov, off)
}

func vectored(trap uintptr, fd int, iov []unix.Iovec, off int64) (int, error) {
	// On 64-bit Linux the offset goes whole in pos_l; pos_h is ignored.
	n, _, errno := unix.Syscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(iov))),
		uintptr(len(iov)), uintptr(off), 0, 0)
	if errno != 0 {
		return int(n), errno
	}
	return int(n), nil
}

// advance moves an iovec's base past n bytes already transferred.
func advance(p *byte, n int) *byte {
	return (*byte)(unsafe.Add(unsafe.Pointer(p), n))
}

// alignedPages returns n pages of memory aligned to the page size, as
// O_DIRECT needs for buffers of our own.
func alignedPages(n int) []byte {
	buf := make([]byte, (n+1)*gnttab.PageSize)
	off := int(uintptr(unsafe.Pointer(unsafe.SliceData(buf))) % gnttab.PageSize)
	if off != 0 {
		off = gnttab.PageSize - off
	}
	return buf[off : off+n*gnttab.PageSize : off+n*gnttab.PageSize]
}

// ioctlRange issues a block device ioctl that takes a {start, length}
// byte range, such as BLKDISCARD.
func ioctlRange(fd int, req uint, start, length uint64) error {
	r := [2]uint64{start, length}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&r)))
	if errno != 0 {
		return errno
	}
	return nil
}
