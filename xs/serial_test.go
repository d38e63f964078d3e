package xs

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// On the xenbus device a Client sends a connection's next request only after
// the previous reply: each peer here checks that nothing else arrives while
// it holds a request, as the kernel's single message buffer per open file
// needs. Concurrent reads still spread over the Client's lanes.
func TestXenbusRequestsOneAtATime(t *testing.T) {
	var mu sync.Mutex
	var overlap bool
	served := 0 // connections that carried a request
	dial := func() (io.ReadWriteCloser, error) {
		client, peer := net.Pipe()
		go oneAtATimePeer(peer, func(o bool) {
			mu.Lock()
			overlap = overlap || o
			served++
			mu.Unlock()
		})
		return client, nil
	}
	c, err := connectLanes(dial, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if v, err := c.Read("/k" + string(rune('a'+i))); err != nil || v != "v" {
				t.Errorf("read: %q, %v", v, err)
			}
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if overlap {
		t.Fatal("a request was sent while another was outstanding")
	}
	if served < 2 {
		t.Fatalf("requests went over %d connection(s), want the lanes too", served)
	}
}

// oneAtATimePeer answers every request on peer with "v". It calls note
// on its first request and whenever another request came while one was
// outstanding, saying whether one did.
func oneAtATimePeer(peer net.Conn, note func(overlap bool)) {
	first := true
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
			held = append(held, h2)
		}
		peer.SetReadDeadline(time.Time{})
		if first || len(held) > 1 {
			note(len(held) > 1)
			first = false
		}
		for _, h := range held {
			if err := WriteMessage(peer, Header{Op: h.Op, ReqID: h.ReqID}, []byte("v")); err != nil {
				return
			}
		}
	}
}
