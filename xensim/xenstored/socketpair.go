package xenstored

import (
	"net"
	"os"
	"syscall"
)

// socketPair returns two connected stream sockets.
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	var cs [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "xenstore-pair")
		cs[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			if i == 1 {
				cs[0].Close()
			} else {
				syscall.Close(fds[1])
			}
			return nil, nil, err
		}
	}
	return cs[0], cs[1], nil
}
