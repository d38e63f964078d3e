package rtnl

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Conn is a NETLINK_ROUTE socket in the network namespace of the thread
// that opened it. It sends one request at a time.
type Conn struct {
	fd  int
	seq uint32
	buf []byte
}

// Open opens a routing socket.
func Open() (*Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("bind", err)
	}
	return &Conn{fd: fd, buf: make([]byte, os.Getpagesize())}, nil
}

// Close closes the socket.
func (c *Conn) Close() error { return unix.Close(c.fd) }

// request sends one message to the kernel and waits for its
// acknowledgement.
func (c *Conn) request(typ uint16, flags uint16, body []byte) error {
	c.seq++
	if err := unix.Sendto(c.fd, message(typ, flags, c.seq, body), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return os.NewSyscallError("sendto", err)
	}
	for {
		n, from, err := unix.Recvfrom(c.fd, c.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("recvfrom", err)
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // not from the kernel
		}
		if done, err := ack(c.buf[:n], c.seq); done {
			return err
		}
		if n == len(c.buf) {
			return fmt.Errorf("rtnetlink: reply longer than %d bytes", n)
		}
	}
}
