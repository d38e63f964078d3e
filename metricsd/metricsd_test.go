package metricsd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// start serves page on a loopback port until the test ends.
func start(t *testing.T, page func(io.Writer) error) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, page) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

const page = "# TYPE x counter\nx 1\n"

func writePage(w io.Writer) error { _, err := io.WriteString(w, page); return err }

// Go's own HTTP client sees a well-formed answer for each request.
func TestHTTPClient(t *testing.T) {
	addr := start(t, writePage)
	for _, tc := range []struct {
		method, path string
		status       int
		body         string
	}{
		{"GET", "/metrics", 200, page},
		{"GET", "/metrics?name[]=x", 200, page},
		{"HEAD", "/metrics", 200, ""},
		{"GET", "/", 404, "404 Not Found\n"},
		{"GET", "/metrics/", 404, "404 Not Found\n"},
		{"GET", "/metricsx", 404, "404 Not Found\n"},
		{"POST", "/metrics", 405, "405 Method Not Allowed\n"},
	} {
		req, err := http.NewRequest(tc.method, "http://"+addr+tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s %s: reading the body: %v", tc.method, tc.path, err)
		}
		if resp.StatusCode != tc.status || string(body) != tc.body {
			t.Errorf("%s %s: %d %q, want %d %q", tc.method, tc.path, resp.StatusCode, body, tc.status, tc.body)
		}
		if tc.status == 200 && resp.Header.Get("Content-Type") != ContentType {
			t.Errorf("%s %s: Content-Type %q", tc.method, tc.path, resp.Header.Get("Content-Type"))
		}
		if tc.method == "HEAD" && resp.ContentLength != int64(len(page)) {
			t.Errorf("HEAD: Content-Length %d, want %d", resp.ContentLength, len(page))
		}
		if !resp.Close {
			t.Errorf("%s %s: the connection stays open", tc.method, tc.path)
		}
	}
}

// A page that fails to render is a 500, not half a page.
func TestPageError(t *testing.T) {
	addr := start(t, func(w io.Writer) error {
		io.WriteString(w, "partial")
		return errors.New("broken")
	})
	resp, err := http.Get("http://" + addr + Path)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 500 || strings.Contains(string(body), "partial") {
		t.Errorf("%d %q", resp.StatusCode, body)
	}
}

// roundTrip writes raw bytes on a fresh connection and returns the status
// line of the answer.
func roundTrip(t *testing.T, addr, raw string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("%.40q: %v", raw, err)
	}
	return strings.TrimSpace(line)
}

// What is not an HTTP/1.x request head of a bounded size is refused.
func TestMalformed(t *testing.T) {
	addr := start(t, writePage)
	for _, tc := range []struct{ raw, want string }{
		{"GET /metrics HTTP/1.0\n\n", "HTTP/1.1 200 OK"},
		{"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 OK"},
		{"hello\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"GET /metrics\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"GET metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"GET /metrics HTTP/2.0\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"GET /metrics HTTP/1.1\r\nX: " + strings.Repeat("a", maxHead) + "\r\n\r\n", "HTTP/1.1 431 Request Header Fields Too Large"},
		{"GET /" + strings.Repeat("a", 2*maxHead) + " HTTP/1.1\r\n\r\n", "HTTP/1.1 431 Request Header Fields Too Large"},
	} {
		if got := roundTrip(t, addr, tc.raw); got != tc.want {
			t.Errorf("%.40q: %q, want %q", tc.raw, got, tc.want)
		}
	}
}

// Clients that connect and say nothing hold a slot only until the
// deadline, and while they do, the remaining slots still answer.
func TestIdleClients(t *testing.T) {
	defer func(d time.Duration) { timeout = d }(timeout)
	timeout = 300 * time.Millisecond
	addr := start(t, writePage)
	var idle []net.Conn
	for range maxConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	// Every slot is taken: a request now waits for a deadline to pass.
	t0 := time.Now()
	if got := roundTrip(t, addr, "GET /metrics HTTP/1.1\r\n\r\n"); got != "HTTP/1.1 200 OK" {
		t.Fatal(got)
	}
	if waited := time.Since(t0); waited < timeout/2 {
		t.Errorf("answered after %v with every slot held by an idle client", waited)
	}
	// The idle clients were disconnected (after a 400 nobody reads).
	for i, c := range idle {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Errorf("idle client %d: %v", i, err)
		}
	}
}

// Serve returns nil once its context ends, and has closed the listener.
func TestStop(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, writePage) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
		c.Close()
		t.Error(fmt.Sprint("still accepting on ", l.Addr()))
	}
}
