package appliance

import "golang.org/x/sys/unix"

// populateRead faults in the n bytes of the process's own mappings at
// addr (madvise MADV_POPULATE_READ). x/sys/unix's Madvise takes a []byte,
// and the executable's mappings are no Go memory: the raw call takes the
// address as the kernel gave it in /proc/self/maps.
func populateRead(addr, n uintptr) error {
	if _, _, errno := unix.Syscall(unix.SYS_MADVISE, addr, n, unix.MADV_POPULATE_READ); errno != 0 {
		return errno
	}
	return nil
}
