package xenstored

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"syscall"
	"testing"
	"time"

	"blkdom/xs"
)

// checkTree verifies the store's invariants: the root exists, every node has
// permissions, every child listed exists, and every node is listed by its
// parent exactly once.
func checkTree(t *testing.T, s *Server) {
	t.Helper()
	if s.nodes["/"] == nil {
		t.Fatal("root removed")
	}
	for path, n := range s.nodes {
		if len(n.perms) == 0 || n.gen == 0 {
			t.Fatalf("%s: perms %v gen %d", path, n.perms, n.gen)
		}
		seen := map[string]bool{}
		for _, c := range n.children {
			cp := path + "/" + c
			if path == "/" {
				cp = "/" + c
			}
			if s.nodes[cp] == nil || seen[c] {
				t.Fatalf("%s lists child %q: missing or twice", path, c)
			}
			seen[c] = true
		}
		if path == "/" {
			continue
		}
		pp, name := parentOf(path)
		parent := s.nodes[pp]
		if parent == nil {
			t.Fatalf("%s has no parent", path)
		}
		count := 0
		for _, c := range parent.children {
			if c == name {
				count++
			}
		}
		if count != 1 {
			t.Fatalf("%s listed %d times by its parent", path, count)
		}
	}
}

// testConn returns a connection of s for domain dom that is not attached to
// any network, so handle can be called directly.
func testConn(s *Server, dom uint32) *conn {
	return newConn(s, nil, dom)
}

func msg(op xs.Op, tx uint32, payload string) []byte {
	b := make([]byte, xs.HeaderSize, xs.HeaderSize+len(payload))
	binary.LittleEndian.PutUint32(b[0:], uint32(op))
	binary.LittleEndian.PutUint32(b[8:], tx)
	binary.LittleEndian.PutUint32(b[12:], uint32(len(payload)))
	return append(b, payload...)
}

func FuzzHandle(f *testing.F) {
	seeds := [][]byte{
		msg(xs.OpWrite, 0, "/a/b/c\x00v"),
		append(msg(xs.OpWrite, 0, "/a/b\x00v"), msg(xs.OpRm, 0, "/a\x00")...),
		append(msg(xs.OpTransactionStart, 0, "\x00"), append(msg(xs.OpWrite, 1, "/x\x001"), msg(xs.OpTransactionEnd, 1, "T\x00")...)...),
		append(msg(xs.OpMkdir, 0, "rel/dir\x00"), msg(xs.OpSetPerms, 0, "rel\x00b1\x00r0\x00")...),
		append(msg(xs.OpWatch, 0, "/\x00t\x00"), msg(xs.OpRm, 0, "/local\x00")...),
		msg(xs.OpDirectoryPart, 0, "/\x000\x00"),
		msg(xs.OpIntroduce, 0, "3\x000\x001\x00"),
	}
	for _, s := range seeds {
		f.Add(s, uint8(0))
		f.Add(s, uint8(1))
	}
	f.Fuzz(func(t *testing.T, stream []byte, dom uint8) {
		s := New()
		c := testConn(s, uint32(dom))
		s.conns[c] = struct{}{} // receives events, which nobody sends
		r := bytes.NewReader(stream)
		buf := make([]byte, xs.MaxPayload)
		for {
			h, p, err := xs.ReadMessage(r, buf)
			if err != nil {
				break
			}
			c.out.Reset()
			s.mu.Lock()
			c.handle(h, p)
			s.mu.Unlock()
			if n := c.events.Len(); n > eventQueueMax {
				t.Fatalf("event queue holds %d", n)
			}
		}
		checkTree(t, s)
		// Every open transaction must still commit or fail cleanly.
		for id, tx := range c.txs {
			if errno := s.commit(tx); errno != 0 && errno != syscall.EAGAIN {
				t.Fatalf("commit of %d: %v", id, errno)
			}
			checkTree(t, s)
		}
	})
}

func TestEventQueueBounded(t *testing.T) {
	s := New()
	defer s.Close()
	// A connection that watches everything and never reads its events.
	slow, err := s.DialAs(0)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if err := xs.WriteMessage(slow, xs.Header{Op: xs.OpWatch, ReqID: 1}, []byte("/\x00all\x00")); err != nil {
		t.Fatal(err)
	}
	nc, err := s.DialAs(0)
	if err != nil {
		t.Fatal(err)
	}
	writer := xs.NewClient(nc)
	defer writer.Close()
	start := time.Now()
	for i := range 5000 {
		if err := writer.Write(fmt.Sprintf("/flood/%d/%d", i%50, i), "0123456789abcdef0123456789abcdef"); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("writer slowed down by a stuck watcher: %v", d)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		n := c.events.Len()
		if n > eventQueueMax {
			t.Fatalf("connection of dom %d queues %d events", c.dom, n)
		}
		if len(c.watches) > 0 && n != eventQueueMax {
			t.Fatalf("stuck watcher queues %d events: the flood did not reach the bound", n)
		}
	}
}

func TestRestartKeepsStore(t *testing.T) {
	s := New()
	defer s.Close()
	dial := func() *xs.Client {
		nc, err := s.DialAs(0)
		if err != nil {
			t.Fatal(err)
		}
		return xs.NewClient(nc)
	}
	c := dial()
	if err := c.Write("/keep", "me"); err != nil {
		t.Fatal(err)
	}
	s.Restart()
	if _, err := c.Read("/keep"); err == nil {
		t.Fatal("connection survived Restart")
	}
	c.Close()
	c = dial()
	defer c.Close()
	if v, err := c.Read("/keep"); err != nil || v != "me" {
		t.Fatalf("after Restart: %q %v", v, err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections registered, want 1", n)
		}
	}
}
