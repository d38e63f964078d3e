// Package xenstoredtest starts the Go xenstored for a test: on a unix
// socket, as Debian's xenstore tools and blkdom serve reach a real one,
// with a dom0 client connected through it. It is its own package so that
// package testing stays out of the blkdom binary, which links xenstored
// for its demo.
package xenstoredtest

import (
	"path/filepath"
	"testing"

	"blkdom/xensim/xenstored"
	"blkdom/xs"
)

// Start serves a new xenstored on a socket in the test's temporary
// directory and dials it; the server and the client close with the test.
func Start(t testing.TB) (s *xenstored.Server, sock string, dom0 *xs.Client) {
	t.Helper()
	s = xenstored.New()
	sock = filepath.Join(t.TempDir(), "socket")
	if err := s.Listen(sock); err != nil {
		s.Close()
		t.Fatal(err)
	}
	dom0, err := xs.Dial(sock)
	if err != nil {
		s.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dom0.Close()
		s.Close()
	})
	return s, sock, dom0
}
