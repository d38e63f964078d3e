package xs

import (
	"errors"
	"syscall"
)

// Error is a failed xenstore operation: the errno xenstored named in its
// ERROR reply (or the client's own verdict, e.g. E2BIG for an oversized
// request, EAGAIN for a transaction cut by a reconnect). It unwraps to the
// syscall.Errno, so errors.Is(err, syscall.ENOENT) and
// errors.Is(err, fs.ErrNotExist) both work.
type Error struct {
	Op   Op
	Path string
	Err  syscall.Errno
}

func (e *Error) Error() string {
	if e.Path == "" {
		return "xs: " + e.Op.String() + ": " + e.Err.Error()
	}
	return "xs: " + e.Op.String() + " " + e.Path + ": " + e.Err.Error()
}

// Unwrap returns the errno.
func (e *Error) Unwrap() error { return e.Err }

// ErrClosed is returned by calls on a closed Client, including calls that
// were waiting for a reconnect when Close ran.
var ErrClosed = errors.New("xs: client closed")
