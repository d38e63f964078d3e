package xensim

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// eventfdIO reads (trap SYS_READ) or writes (SYS_WRITE) the 8 bytes of an
// event handle's non-blocking eventfd as a raw system call, as the evtchn
// device's reads, writes and ioctls are (evtchn/device_unsafe.go): an
// ordinary call would wake the Go runtime's sysmon where a real event
// channel does not, and the simulation would count that against the
// backend's loop.
func eventfdIO(trap uintptr, fd int, b *[8]byte) {
	unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(b)), 8)
}
