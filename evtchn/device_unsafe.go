package evtchn

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl runs one ioctl with d.arg as its argument and returns the kernel's
// return value. Callers hold mu, so that Close cannot free the descriptor
// meanwhile.
func (d *Device) ioctl(req uintptr, a0, a1 uint32) (uint32, error) {
	if d.closed {
		return 0, os.ErrClosed
	}
	d.arg = [2]uint32{a0, a1}
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), req, uintptr(unsafe.Pointer(&d.arg)))
	if e != 0 {
		return 0, e
	}
	return uint32(r), nil
}
