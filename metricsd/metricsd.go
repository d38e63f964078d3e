// Package metricsd answers "GET /metrics" over HTTP/1.x with a page its
// caller writes, and nothing else. It exists so that blkdom serves
// Prometheus without net/http, which would add about 3 MB to a binary
// that is also a driver domain's whole userspace.
//
// It is deliberately small: it reads one bounded request head, answers
// it and closes the connection (no keep-alive, no request bodies, no
// chunked encoding), serves a few connections at a time, and gives each
// one a deadline, so a slow or hostile client costs a goroutine for a
// bounded time and nothing more.
package metricsd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

const (
	// Path is the one path served.
	Path = "/metrics"
	// ContentType is Prometheus's text exposition format.
	ContentType = "text/plain; version=0.0.4; charset=utf-8"
	// maxHead bounds the request line and headers together.
	maxHead = 8 << 10
	// maxConns bounds the connections served at once; more wait in the
	// kernel's accept queue.
	maxConns = 4
)

// timeout bounds one connection's whole life, reading to closing (a
// variable so the test can shorten it).
var timeout = 10 * time.Second

// Serve accepts connections on l until ctx is done or l fails, answering
// GET (and HEAD) /metrics with what page writes, 404 for any other path,
// 405 for other methods and 400 for what is not an HTTP/1.x request. It
// closes l before returning, and returns nil when ctx ended it.
func Serve(ctx context.Context, l net.Listener, page func(io.Writer) error) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()
	slots := make(chan struct{}, maxConns)
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			defer func() { <-slots }()
			serveConn(c, page)
		}()
	}
}

// serveConn answers one request on c and closes it.
func serveConn(c net.Conn, page func(io.Writer) error) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	status, head := readRequest(bufio.NewReaderSize(io.LimitReader(c, maxHead), 1024))
	var body bytes.Buffer
	if status == 200 {
		if err := page(&body); err != nil {
			status = 500
			body.Reset()
		}
	}
	ctype := ContentType
	if status != 200 {
		ctype = "text/plain; charset=utf-8"
		fmt.Fprintf(&body, "%d %s\n", status, statusText[status])
	}
	w := bufio.NewWriter(c)
	fmt.Fprintf(w, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n",
		status, statusText[status], ctype, body.Len())
	if !head {
		w.Write(body.Bytes())
	}
	if w.Flush() == nil && status != 200 {
		drain(c)
	}
}

// drain ends c's sending side, then reads and drops what the client still
// sends until it closes or the connection's deadline passes: closing a
// socket with unread input resets the connection, and a reset can destroy
// an error answer before the client reads it.
func drain(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
		io.CopyN(io.Discard, c, 1<<20)
	}
}

var statusText = map[int]string{
	200: "OK",
	400: "Bad Request",
	404: "Not Found",
	405: "Method Not Allowed",
	431: "Request Header Fields Too Large",
	500: "Internal Server Error",
}

// readRequest reads a request head up to its blank line and returns the
// status to answer with, and whether the method was HEAD (no body).
func readRequest(r *bufio.Reader) (status int, head bool) {
	line, err := readLine(r)
	if err != nil {
		return errStatus(err), false
	}
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !strings.HasPrefix(proto, "HTTP/1.") || !strings.HasPrefix(target, "/") {
		return 400, false
	}
	for { // the headers: nothing in them changes the answer
		h, err := readLine(r)
		if err != nil {
			return errStatus(err), false
		}
		if h == "" {
			break
		}
	}
	head = method == "HEAD"
	switch {
	case method != "GET" && !head:
		return 405, head
	case strings.SplitN(target, "?", 2)[0] != Path:
		return 404, head
	}
	return 200, head
}

// errHead is a request head longer than maxHead.
var errHead = errors.New("request head too large")

// readLine reads one CRLF- or LF-terminated line without its terminator.
func readLine(r *bufio.Reader) (string, error) {
	s, err := r.ReadString('\n')
	if errors.Is(err, io.EOF) && len(s) > 0 {
		err = errHead // the limit cut it (a client that hung up mid-line hears nothing)
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(strings.TrimSuffix(s, "\n"), "\r"), nil
}

func errStatus(err error) int {
	if errors.Is(err, errHead) {
		return 431
	}
	return 400
}
