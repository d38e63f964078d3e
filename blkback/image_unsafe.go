package blkback

import (
	"unsafe"

	"golang.org/x/sys/unix"
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
