// Package xenstored is a xenstore daemon in Go, for tests and the demo: an
// in-memory tree of nodes with xenstored's permission rules, watches and
// transactions, served over unix-socket connections (dom0) or any net.Conn
// (as a chosen domain). Debian's xenstore-utils and the blkdom/xs client talk
// to it as they talk to the real one.
//
// It owns the store and the protocol's server side; it does not model
// event-channel or shared-ring transports (every domain connects through a
// stream), node quotas, or SET_TARGET (answered ENOSYS).
//
// Watch events go through a bounded per-connection queue: duplicates of an
// event still queued are merged, and when the queue is full new events are
// dropped (as xenstored does for domains that do not read their events).
// An event is sent only to a connection that may read the changed node
// (for a removal, the removed node's permissions decide); the special
// @introduceDomain and @releaseDomain events go to every watcher.
package xenstored

import (
	"errors"
	"net"
	"strconv"
	"sync"
	"syscall"

	"blkdom/xs"
	"blkdom/xs/evqueue"
)

// Limits for unprivileged connections, as in xenstored's defaults.
const (
	maxWatches      = 128 // per connection (E2BIG beyond)
	maxTransactions = 10  // open per connection (ENOSPC beyond)
)

// eventQueueMax bounds the watch events queued for one connection.
const eventQueueMax = 1024

// Server is a xenstore daemon. The zero value is not usable; call New.
type Server struct {
	mu         sync.Mutex
	nodes      map[string]*node
	gen        uint64
	lastTx     uint32
	conns      map[*conn]struct{}
	listeners  []net.Listener
	introduced map[uint32]bool
	closed     bool
	wg         sync.WaitGroup
}

// New returns a server whose store holds "/", "/local" and "/local/domain",
// owned by dom0 and unreadable by other domains (perms n0).
func New() *Server {
	s := &Server{
		nodes:      make(map[string]*node),
		conns:      make(map[*conn]struct{}),
		introduced: map[uint32]bool{0: true},
	}
	n0 := []xs.Perm{{Dom: 0, Access: xs.AccessNone}}
	s.set(nil, "/", &node{perms: n0, children: []string{"local"}})
	s.set(nil, "/local", &node{perms: n0, children: []string{"domain"}})
	s.set(nil, "/local/domain", &node{perms: n0})
	return s
}

// Listen accepts connections on a new unix socket at socketPath, in the
// background, serving each as dom0 (the socket is the privileged interface).
func (s *Server) Listen(socketPath string) error {
	l, err := net.Listen("unix", socketPath)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return net.ErrClosed
	}
	s.listeners = append(s.listeners, l)
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			s.ServeConn(nc, 0)
		}
	}()
	return nil
}

// ServeConn serves nc as domain dom (privileged only when dom is 0) until
// it closes, in the background. Relative paths resolve to /local/domain/<dom>.
func (s *Server) ServeConn(nc net.Conn, dom uint32) {
	c := newConn(s, nc, dom)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(2)
	s.mu.Unlock()
	go c.serve()
	go c.sendEvents()
}

// newConn returns the state of a connection from domain dom on nc.
func newConn(s *Server, nc net.Conn, dom uint32) *conn {
	return &conn{s: s, nc: nc, dom: dom, home: domainPath(dom),
		txs: make(map[uint32]*tx), events: evqueue.New[event](eventQueueMax)}
}

// DialAs returns a client end of a new connection served as domain dom, for
// in-process frontends and toolstacks.
func (s *Server) DialAs(dom uint32) (net.Conn, error) {
	client, server, err := socketPair()
	if err != nil {
		return nil, err
	}
	s.ServeConn(server, dom)
	return client, nil
}

// Restart drops every connection, as a xenstored live restart does to its
// clients (they see EOF), and keeps the store. Open transactions and watches
// die with their connections; listeners keep accepting.
func (s *Server) Restart() {
	s.mu.Lock()
	cs := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		c.dropped = true
		cs = append(cs, c)
	}
	s.mu.Unlock()
	for _, c := range cs {
		c.close()
	}
}

// Close stops the listeners and drops every connection, and waits for
// their goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	ls := s.listeners
	s.listeners = nil
	s.mu.Unlock()
	var err error
	for _, l := range ls {
		if e := l.Close(); e != nil && err == nil {
			err = e
		}
	}
	s.Restart()
	s.wg.Wait()
	return err
}

// conn is one client connection and the domain it speaks for.
type conn struct {
	s    *Server
	nc   net.Conn
	dom  uint32
	home string // /local/domain/<dom>

	// Guarded by s.mu.
	watches []*watch
	txs     map[uint32]*tx
	dropped bool // by Restart: handle no more requests, even ones already read

	wmu sync.Mutex // serialises writes to nc
	out xs.Frame   // reply being built; used by serve only

	events *evqueue.Queue[event] // watch events not yet written
}

type watch struct {
	path  string // absolute, or @special
	token string
	rel   bool // registered relative to home: report paths relative
}

type event struct{ path, token string }

func (c *conn) close() {
	c.nc.Close()
	c.events.Close()
}

// serve reads and answers requests until the connection fails. A message
// that cannot be framed (oversized) drops the connection; any other bad
// request gets an error reply.
func (c *conn) serve() {
	defer c.s.wg.Done()
	defer func() {
		c.close()
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	}()
	buf := make([]byte, xs.MaxPayload)
	for {
		h, p, err := xs.ReadMessage(c.nc, buf)
		if err != nil {
			return
		}
		c.out.Reset()
		c.s.mu.Lock()
		if c.dropped {
			c.s.mu.Unlock()
			return
		}
		fire, errno := c.handle(h, p)
		c.s.mu.Unlock()
		op := h.Op
		if errno == 0 && !c.out.Fits(0) {
			errno = syscall.E2BIG
		}
		if errno != 0 {
			op = xs.OpError
			c.out.Reset()
			c.out.AddArg(xs.ErrnoName(errno))
			fire = nil
		}
		c.wmu.Lock()
		err = c.out.Send(c.nc, xs.Header{Op: op, ReqID: h.ReqID, TxID: h.TxID})
		c.wmu.Unlock()
		if err != nil {
			return
		}
		if fire != nil { // a new watch's first event, after the reply
			c.queue(fire.path, fire.token)
		}
	}
}

// queue adds an event unless the same one is already queued or the queue
// is full.
func (c *conn) queue(path, token string) { c.events.Push(event{path, token}) }

// sendEvents writes queued watch events until the connection closes.
func (c *conn) sendEvents() {
	defer c.s.wg.Done()
	var f xs.Frame
	for {
		ev, ok := c.events.Pop()
		if !ok {
			return
		}
		f.Reset()
		f.AddArg(ev.path)
		f.AddArg(ev.token)
		c.wmu.Lock()
		err := f.Send(c.nc, xs.Header{Op: xs.OpWatchEvent})
		c.wmu.Unlock()
		if err != nil {
			c.close()
			return
		}
	}
}

// fire queues the events of change ch on every connection watching it.
// Called with s.mu held.
func (s *Server) fire(ch change) {
	for c := range s.conns {
		if !access(c.dom, ch.perms).CanRead() {
			continue
		}
		for _, w := range c.watches {
			var p string
			switch {
			case isBelow(ch.path, w.path):
				p = ch.path
			case ch.removed && isBelow(w.path, ch.path):
				p = w.path
			default:
				continue
			}
			c.queue(c.report(w, p), w.token)
		}
	}
}

// fireSpecial queues the event of a special watch path such as
// @introduceDomain. Called with s.mu held.
func (s *Server) fireSpecial(name string) {
	for c := range s.conns {
		for _, w := range c.watches {
			if w.path == name {
				c.queue(name, w.token)
			}
		}
	}
}

// report returns the event path for watch w: relative to home if w was
// registered relative.
func (c *conn) report(w *watch, p string) string {
	if w.rel && len(p) > len(c.home) {
		return p[len(c.home)+1:]
	}
	return p
}

// canonical resolves a path argument: absolute as is, relative under the
// connection's home.
func (c *conn) canonical(p []byte) (path string, rel bool, ok bool) {
	if len(p) == 0 {
		return "", false, false
	}
	if p[0] == '/' {
		path = string(p)
	} else {
		path, rel = c.home+"/"+string(p), true
	}
	return path, rel, validPath(path)
}

// errBadArgs marks a malformed request payload.
var errBadArgs = errors.New("malformed arguments")

// args splits p into exactly len(dst) NUL-terminated arguments.
func args(p []byte, dst [][]byte) error {
	for i := range dst {
		a, rest, ok := xs.NextArg(p)
		if !ok {
			return errBadArgs
		}
		dst[i], p = a, rest
	}
	if len(p) != 0 {
		return errBadArgs
	}
	return nil
}

// parseDom parses a decimal domain id argument.
func parseDom(b []byte) (uint32, bool) {
	v, err := strconv.ParseUint(string(b), 10, 32)
	return uint32(v), err == nil
}
