package xenstored_test

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"blkdom/xensim/xenstored"
	"blkdom/xs"
)

// rawConn is a connection driven message by message.
type rawConn struct {
	t   *testing.T
	nc  net.Conn
	buf []byte
	req uint32
}

func dialRaw(t *testing.T, s *xenstored.Server, dom uint32) *rawConn {
	nc, err := s.DialAs(dom)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawConn{t: t, nc: nc, buf: make([]byte, xs.MaxPayload)}
}

// do sends one request and returns the reply, skipping watch events.
func (r *rawConn) do(op xs.Op, txid uint32, payload string) (xs.Header, string) {
	r.t.Helper()
	r.req++
	if err := xs.WriteMessage(r.nc, xs.Header{Op: op, ReqID: r.req, TxID: txid}, []byte(payload)); err != nil {
		r.t.Fatal(err)
	}
	for {
		r.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		h, p, err := xs.ReadMessage(r.nc, r.buf)
		if err != nil {
			r.t.Fatalf("%v %q: %v", op, payload, err)
		}
		if h.Op == xs.OpWatchEvent {
			continue
		}
		if h.ReqID != r.req {
			r.t.Fatalf("reply to request %d, want %d", h.ReqID, r.req)
		}
		return h, string(p)
	}
}

func TestWireRequests(t *testing.T) {
	s := xenstored.New()
	defer s.Close()
	dom0 := dialRaw(t, s, 0)
	domU := dialRaw(t, s, 5)
	tests := []struct {
		name    string
		c       *rawConn
		op      xs.Op
		tx      uint32
		payload string
		wantOp  xs.Op
		want    string
	}{
		{"write", dom0, xs.OpWrite, 0, "/t/a\x00v", xs.OpWrite, "OK\x00"},
		{"write empty value", dom0, xs.OpWrite, 0, "/t/e\x00", xs.OpWrite, "OK\x00"},
		{"write without NUL", dom0, xs.OpWrite, 0, "/t/a", xs.OpError, "EINVAL\x00"},
		{"read", dom0, xs.OpRead, 0, "/t/a\x00", xs.OpRead, "v"},
		{"read without NUL", dom0, xs.OpRead, 0, "/t/a", xs.OpError, "EINVAL\x00"},
		{"read two args", dom0, xs.OpRead, 0, "/t/a\x00x\x00", xs.OpError, "EINVAL\x00"},
		{"read empty path", dom0, xs.OpRead, 0, "\x00", xs.OpError, "EINVAL\x00"},
		{"read missing", dom0, xs.OpRead, 0, "/t/zz\x00", xs.OpError, "ENOENT\x00"},
		{"directory", dom0, xs.OpDirectory, 0, "/t\x00", xs.OpDirectory, "a\x00e\x00"},
		{"directory part", dom0, xs.OpDirectoryPart, 0, "/t\x000\x00", xs.OpDirectoryPart, "\x00a\x00e\x00\x00"},
		{"directory part offset", dom0, xs.OpDirectoryPart, 0, "/t\x002\x00", xs.OpDirectoryPart, "\x00e\x00\x00"},
		{"directory part past end", dom0, xs.OpDirectoryPart, 0, "/t\x0099\x00", xs.OpDirectoryPart, "\x00\x00"},
		{"directory part bad offset", dom0, xs.OpDirectoryPart, 0, "/t\x00x\x00", xs.OpError, "EINVAL\x00"},
		{"get perms", dom0, xs.OpGetPerms, 0, "/t/a\x00", xs.OpGetPerms, "n0\x00"},
		{"set perms", dom0, xs.OpSetPerms, 0, "/t/a\x00b5\x00r7\x00", xs.OpSetPerms, "OK\x00"},
		{"set perms read back", dom0, xs.OpGetPerms, 0, "/t/a\x00", xs.OpGetPerms, "b5\x00r7\x00"},
		{"set perms none", dom0, xs.OpSetPerms, 0, "/t/a\x00", xs.OpError, "EINVAL\x00"},
		{"set perms bad letter", dom0, xs.OpSetPerms, 0, "/t/a\x00q1\x00", xs.OpError, "EINVAL\x00"},
		{"domain path", dom0, xs.OpGetDomainPath, 0, "12\x00", xs.OpGetDomainPath, "/local/domain/12\x00"},
		{"domain path bad", dom0, xs.OpGetDomainPath, 0, "x\x00", xs.OpError, "EINVAL\x00"},
		{"watch one arg", dom0, xs.OpWatch, 0, "/t\x00", xs.OpError, "EINVAL\x00"},
		{"watch", dom0, xs.OpWatch, 0, "/t\x00tok\x00", xs.OpWatch, "OK\x00"},
		{"watch again", dom0, xs.OpWatch, 0, "/t\x00tok\x00", xs.OpError, "EEXIST\x00"},
		{"unwatch", dom0, xs.OpUnwatch, 0, "/t\x00tok\x00", xs.OpUnwatch, "OK\x00"},
		{"unwatch unknown", dom0, xs.OpUnwatch, 0, "/t\x00tok\x00", xs.OpError, "ENOENT\x00"},
		{"special watch", dom0, xs.OpWatch, 0, "@releaseDomain\x00r\x00", xs.OpWatch, "OK\x00"},
		{"unknown tx", dom0, xs.OpRead, 77, "/t/a\x00", xs.OpError, "ENOENT\x00"},
		{"tx start bad payload", dom0, xs.OpTransactionStart, 0, "", xs.OpError, "EINVAL\x00"},
		{"tx end without tx", dom0, xs.OpTransactionEnd, 0, "T\x00", xs.OpError, "ENOENT\x00"},
		{"introduce", dom0, xs.OpIntroduce, 0, "7\x000\x001\x00", xs.OpIntroduce, "OK\x00"},
		{"introduced", dom0, xs.OpIsDomainIntroduced, 0, "7\x00", xs.OpIsDomainIntroduced, "T\x00"},
		{"release", dom0, xs.OpRelease, 0, "7\x00", xs.OpRelease, "OK\x00"},
		{"released", dom0, xs.OpIsDomainIntroduced, 0, "7\x00", xs.OpIsDomainIntroduced, "F\x00"},
		{"domU introduce", domU, xs.OpIntroduce, 0, "8\x000\x001\x00", xs.OpError, "EACCES\x00"},
		{"set target", dom0, xs.OpSetTarget, 0, "7\x008\x00", xs.OpError, "ENOSYS\x00"},
		{"unknown op", dom0, xs.Op(99), 0, "", xs.OpError, "EINVAL\x00"},
		{"client sends ERROR", dom0, xs.OpError, 0, "EIO\x00", xs.OpError, "EINVAL\x00"},
		{"client sends WATCH_EVENT", dom0, xs.OpWatchEvent, 0, "/a\x00t\x00", xs.OpError, "EINVAL\x00"},
		{"domU relative write", domU, xs.OpWrite, 0, "data\x00x", xs.OpError, "EACCES\x00"},
		{"domU reads root", domU, xs.OpRead, 0, "/\x00", xs.OpError, "EACCES\x00"},
		{"reset watches", dom0, xs.OpResetWatches, 0, "", xs.OpResetWatches, "OK\x00"},
		{"big reply", dom0, xs.OpWrite, 0, "/t/big\x00" + strings.Repeat("x", xs.MaxPayload-8), xs.OpWrite, "OK\x00"},
	}
	for _, tt := range tests {
		h, p := tt.c.do(tt.op, tt.tx, tt.payload)
		if tt.name == "directory part" || strings.HasPrefix(tt.name, "directory part ") {
			// Strip the generation: it is a number the test cannot know.
			if i := strings.IndexByte(p, 0); i > 0 && h.Op == xs.OpDirectoryPart {
				p = p[i:]
			}
		}
		if h.Op != tt.wantOp || p != tt.want {
			t.Errorf("%s: reply %v %q, want %v %q", tt.name, h.Op, p, tt.wantOp, tt.want)
		}
	}
}

func TestWireTransaction(t *testing.T) {
	s := xenstored.New()
	defer s.Close()
	c := dialRaw(t, s, 0)
	h, p := c.do(xs.OpTransactionStart, 0, "\x00")
	if h.Op != xs.OpTransactionStart || len(p) < 2 || p[len(p)-1] != 0 {
		t.Fatalf("start: %v %q", h.Op, p)
	}
	var id uint32
	for _, d := range p[:len(p)-1] {
		id = id*10 + uint32(d-'0')
	}
	if h, p := c.do(xs.OpTransactionStart, id, "\x00"); h.Op != xs.OpError || p != "EBUSY\x00" {
		t.Errorf("nested start: %v %q", h.Op, p)
	}
	if h, p := c.do(xs.OpWrite, id, "/tx/a\x001"); h.Op != xs.OpWrite || p != "OK\x00" {
		t.Errorf("write in tx: %v %q", h.Op, p)
	}
	if h, p := c.do(xs.OpTransactionEnd, id, "X\x00"); h.Op != xs.OpError || p != "EINVAL\x00" {
		t.Errorf("bad end: %v %q", h.Op, p)
	}
	if h, p := c.do(xs.OpTransactionEnd, id, "T\x00"); h.Op != xs.OpTransactionEnd || p != "OK\x00" {
		t.Errorf("commit: %v %q", h.Op, p)
	}
	if h, p := c.do(xs.OpRead, 0, "/tx/a\x00"); p != "1" {
		t.Errorf("read after commit: %v %q", h.Op, p)
	}
	if h, p := c.do(xs.OpRead, id, "/tx/a\x00"); h.Op != xs.OpError || p != "ENOENT\x00" {
		t.Errorf("ended tx still usable: %v %q", h.Op, p)
	}

	// A domU may hold only so many transactions.
	u := dialRaw(t, s, 5)
	for i := range 11 {
		h, p := u.do(xs.OpTransactionStart, 0, "\x00")
		if i < 10 && h.Op != xs.OpTransactionStart || i == 10 && p != "ENOSPC\x00" {
			t.Fatalf("transaction %d: %v %q", i, h.Op, p)
		}
	}
}

func TestWireOversizedDropsConnection(t *testing.T) {
	s := xenstored.New()
	defer s.Close()
	c := dialRaw(t, s, 5)
	hdr := make([]byte, xs.HeaderSize)
	hdr[0] = byte(xs.OpWrite)
	hdr[13] = 0x20 // len 8192
	if _, err := c.nc.Write(hdr); err != nil {
		t.Fatal(err)
	}
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := xs.ReadMessage(c.nc, c.buf); !errors.Is(err, io.EOF) {
		t.Fatalf("oversized message: read %v, want EOF", err)
	}
	// The server still serves others.
	if h, p := dialRaw(t, s, 0).do(xs.OpRead, 0, "/local\x00"); h.Op != xs.OpRead || p != "" {
		t.Fatalf("after a dropped connection: %v %q", h.Op, p)
	}
}

func TestWireGarbage(t *testing.T) {
	s := xenstored.New()
	defer s.Close()
	c := dialRaw(t, s, 5)
	// Random-looking messages of every type: each gets a reply of its
	// request id, never a hang or a crash.
	for op := range xs.Op(30) {
		for _, payload := range []string{"", "\x00", "\x00\x00\x00", "/\x00", "a\x00b\x00c\x00", "\xff\xfe", strings.Repeat("/", 3000) + "\x00"} {
			c.do(op, 0, payload)
		}
	}
	if h, _ := dialRaw(t, s, 0).do(xs.OpRead, 0, "/\x00"); h.Op != xs.OpRead {
		t.Fatalf("root unreadable after garbage: %v", h.Op)
	}
}
