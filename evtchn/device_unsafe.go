package evtchn

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl runs one ioctl with d.arg as its argument and returns the kernel's
// return value. Callers hold mu, so that Close cannot free the descriptor
// meanwhile.
//
// The device's ioctls, reads and writes never block (the descriptor is
// non-blocking; waiting is the netpoller's or the caller's own poll), so
// they are raw system calls: the Go scheduler is not told. Told, it lets
// sysmon hand the caller's P to another thread when a call outlasts its
// 20 µs tick, as every system call of a Xen PV domain does under
// emulation, and the caller then waits for a P back: thread wake-ups and
// switches around each notification.
func (d *Device) ioctl(req uintptr, a0, a1 uint32) (uint32, error) {
	if d.closed {
		return 0, os.ErrClosed
	}
	d.arg = [2]uint32{a0, a1}
	r, _, e := unix.RawSyscall(unix.SYS_IOCTL, uintptr(d.fd), req, uintptr(unsafe.Pointer(&d.arg)))
	if e != 0 {
		return 0, e
	}
	return uint32(r), nil
}

// rawIO reads (trap SYS_READ) or writes (SYS_WRITE) b on the raw
// descriptor, as a raw system call (see ioctl). Callers hold mu.
func (d *Device) rawIO(trap uintptr, b []byte) (int, error) {
	if d.closed {
		return 0, os.ErrClosed
	}
	n, _, e := unix.RawSyscall(trap, uintptr(d.fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
