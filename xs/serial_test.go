package xs

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// On the xenbus device a Client sends its next request only after the
// previous reply: the peer here checks that nothing else arrives while it
// holds a request, as the kernel's single message buffer needs.
func TestXenbusRequestsOneAtATime(t *testing.T) {
	client, peer := net.Pipe()
	var overlap bool
	go func() {
		buf := make([]byte, MaxPayload)
		for {
			h, _, err := ReadMessage(peer, buf)
			if err != nil {
				return
			}
			held := []Header{h}
			// While this request is outstanding, no other may come.
			peer.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if h2, _, err := ReadMessage(peer, buf); err == nil {
				overlap = true
				held = append(held, h2)
			}
			peer.SetReadDeadline(time.Time{})
			for _, h := range held {
				if err := WriteMessage(peer, Header{Op: h.Op, ReqID: h.ReqID}, []byte("v")); err != nil {
					return
				}
			}
		}
	}()
	c, err := connect(func() (io.ReadWriteCloser, error) { return client, nil }, true)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if v, err := c.Read("/k" + string(rune('a'+i))); err != nil || v != "v" {
				t.Errorf("read: %q, %v", v, err)
			}
		}()
	}
	wg.Wait()
	if overlap {
		t.Fatal("a request was sent while another was outstanding")
	}
}
