// Package xs is a xenstore client: the wire format (shared with the test
// server in blkdom/xensim/xenstored), a Client that multiplexes concurrent
// requests, watches and transactions over one connection to xenstored (its
// unix socket, or the kernel's /dev/xen/xenbus), and survives a daemon restart
// by redialling and re-registering its watches.
//
// It owns the protocol only: what the nodes mean (the blkif layout) belongs
// to blkback and blkfront.
package xs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultSocket is where xenstored listens in dom0.
const DefaultSocket = "/var/run/xenstored/socket"

// DefaultXenbus is the kernel's xenstore device, usable from any domain.
const DefaultXenbus = "/dev/xen/xenbus"

// Client is a connection to xenstored. All methods are safe for concurrent
// use: requests carry distinct request ids and one reader goroutine hands each
// reply to its caller and each WATCH_EVENT to its watch.
//
// Reconnect: a Client made by Dial, OpenXenbus, Open or Connect redials with
// backoff when the connection breaks (xenstored restarted), re-registers every
// watch (each then fires once, telling its owner to rescan), and only then
// serves calls again; calls made meanwhile wait. A call cut off by the break
// is resent on the new connection if it is outside a transaction, up to 3
// times, then fails with EIO (every plain operation is idempotent: a repeated
// RM of a vanished node succeeds, a repeated WATCH's EEXIST counts as
// success). Inside a transaction it fails
// with an *Error wrapping syscall.EAGAIN, as does every later operation on that
// transaction, so Transaction redoes the whole transaction. A Client made by
// NewClient does not reconnect: after a break every call fails.
type Client struct {
	dial func() (io.ReadWriteCloser, error) // nil: no reconnect

	lastReq atomic.Uint32
	wmu     sync.Mutex // serialises writes on the connection
	// oneAtATime holds a request from its write to its reply. The kernel's
	// /dev/xen/xenbus needs that: it queues a request that still points
	// into the file's one message buffer and returns, so the next write
	// can overwrite the queued payload before it reaches xenstored (seen:
	// a WRITE of ".../online" carrying the tail of another request's
	// payload). libxenstore serialises its requests on xenbus too. Nil on
	// sockets, where requests pipeline.
	oneAtATime *sync.Mutex
	// lanes are more connections to the same xenbus device, each one at a
	// time, that carry plain requests (outside a transaction, not watches)
	// side by side: the device's one-request limit is per open file, and
	// the kernel forwards every file's request over its one ring, where
	// xenstored answers them in a batch. Nil on sockets.
	lanes    []*Client
	nextLane atomic.Uint32

	mu      sync.Mutex
	cur     io.ReadWriteCloser // connection whose reader runs; nil while down
	usable  bool               // cur is set up (watches re-registered)
	gen     uint64             // counts connections; transactions die with theirs
	ready   chan struct{}      // closed once usable, broken or closed
	broken  error              // set when a NewClient connection is lost
	closed  bool
	done    chan struct{} // closed by Close
	pending map[uint32]*call
	watches map[string]*Watch // by token

	super sync.WaitGroup // the supervisor goroutine
}

// maxPlainRetries bounds how often a plain operation cut off by a broken
// connection is resent (so a request that kills the daemon cannot loop).
const maxPlainRetries = 3

// errConnLost marks a call cut off by a broken connection (internal).
var errConnLost = errors.New("xs: connection lost")

// call is one request in flight: its encoded request and room for the reply.
// Calls are pooled so that a request allocates nothing.
type call struct {
	req  Frame
	resp [MaxPayload]byte
	h    Header // reply header
	gen  uint64 // connection the request went out on
	err  error  // nil or errConnLost
	done chan struct{}
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

func getCall() *call {
	cl := callPool.Get().(*call)
	cl.req.Reset()
	return cl
}

func (cl *call) reply() []byte { return cl.resp[:cl.h.Len] }

// NewClient serves requests over an established connection (for instance
// one from xenstored.Server.DialAs). It does not reconnect; after the
// connection breaks, calls fail.
func NewClient(conn io.ReadWriteCloser) *Client {
	c := newClient(nil)
	c.start(conn)
	return c
}

// Connect dials with dial and keeps the connection up: when it breaks, dial
// is called again with backoff until it succeeds or Close is called.
func Connect(dial func() (io.ReadWriteCloser, error)) (*Client, error) {
	return connect(dial, false)
}

// connect is Connect, with requests one at a time when serial is set.
func connect(dial func() (io.ReadWriteCloser, error), serial bool) (*Client, error) {
	conn, err := dial()
	if err != nil {
		return nil, err
	}
	c := newClient(dial)
	if serial {
		c.oneAtATime = new(sync.Mutex)
	}
	c.start(conn)
	return c, nil
}

// Dial connects to xenstored's unix socket.
func Dial(socketPath string) (*Client, error) {
	return Connect(func() (io.ReadWriteCloser, error) { return net.Dial("unix", socketPath) })
}

// OpenXenbus opens the kernel's xenstore device (DefaultXenbus), which
// speaks the same framing as the socket but takes one request at a time.
func OpenXenbus(devPath string) (*Client, error) {
	return connectLanes(func() (io.ReadWriteCloser, error) { return os.OpenFile(devPath, os.O_RDWR, 0) }, xenbusLanes)
}

// xenbusLanes is how many connections a Client opens on the xenbus device
// besides its own (see Client.lanes): enough for the widest batch blkdom
// sends side by side, a disk's nine configuration reads before it
// connects (blkback's readConfig). In the e2e driver domain (TCG) a round
// trip alone takes 5-30 ms.
const xenbusLanes = 8

// connectLanes is connect with requests one at a time on each connection,
// and n more connections for plain requests. A lane that cannot be opened
// is done without.
func connectLanes(dial func() (io.ReadWriteCloser, error), n int) (*Client, error) {
	c, err := connect(dial, true)
	if err != nil {
		return nil, err
	}
	for range n {
		l, err := connect(dial, true)
		if err != nil {
			break
		}
		c.lanes = append(c.lanes, l)
	}
	return c, nil
}

// Open connects the way libxenstore does: to $XENSTORED_PATH if set (a
// socket, or else a device), else to DefaultSocket if it exists, else to
// DefaultXenbus.
func Open() (*Client, error) {
	path := os.Getenv("XENSTORED_PATH")
	if path == "" {
		if _, err := os.Stat(DefaultSocket); err == nil {
			return Dial(DefaultSocket)
		}
		return OpenXenbus(DefaultXenbus)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		return Dial(path)
	}
	return OpenXenbus(path)
}

func newClient(dial func() (io.ReadWriteCloser, error)) *Client {
	return &Client{
		dial:    dial,
		done:    make(chan struct{}),
		pending: make(map[uint32]*call),
		watches: make(map[string]*Watch),
	}
}

func (c *Client) start(conn io.ReadWriteCloser) {
	c.cur, c.gen = conn, 1
	c.ready = make(chan struct{})
	c.super.Add(1)
	go c.supervise(conn)
}

// Close shuts the connection, stops reconnecting and every watch, and waits
// for every watch's running callback to return (so no callback may call
// it). Calls in flight fail with ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.done)
	conn := c.cur
	if !c.usable && c.broken == nil {
		close(c.ready)
	}
	ws := make([]*Watch, 0, len(c.watches))
	for _, w := range c.watches {
		ws = append(ws, w)
	}
	clear(c.watches)
	c.mu.Unlock()
	var err error
	if conn != nil {
		err = conn.Close()
	}
	for _, l := range c.lanes {
		l.Close()
	}
	c.super.Wait()
	for _, w := range ws {
		w.stop()
	}
	for _, w := range ws {
		<-w.exited
	}
	return err
}

// supervise runs the reader of each connection in turn: it starts it,
// re-registers watches on a new connection, publishes the connection, and
// redials when the reader has retired it.
func (c *Client) supervise(conn io.ReadWriteCloser) {
	defer c.super.Done()
	for first := true; ; first = false {
		readerDone := make(chan struct{})
		go c.read(conn, readerDone)
		if !first {
			c.reregister(conn)
		}
		c.mu.Lock()
		if c.cur == conn && !c.closed {
			c.usable = true
			close(c.ready)
		}
		c.mu.Unlock()
		<-readerDone
		if conn = c.redial(); conn == nil {
			return
		}
	}
}

// lost retires conn: it fails every pending call and makes callers wait for
// the next connection (or fail, if there will be none).
func (c *Client) lost(conn io.ReadWriteCloser, err error) {
	conn.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur = nil
	for id, cl := range c.pending {
		delete(c.pending, id)
		cl.err = errConnLost
		cl.done <- struct{}{}
	}
	if c.closed {
		return
	}
	if c.usable {
		c.usable = false
		c.ready = make(chan struct{})
	}
	if c.dial == nil {
		c.broken = fmt.Errorf("xs: connection lost: %w", err)
		close(c.ready)
	}
}

// redial dials until it succeeds (returning the connection, already current)
// or the client is closed or cannot reconnect (returning nil).
func (c *Client) redial() io.ReadWriteCloser {
	if c.dial == nil {
		return nil
	}
	backoff := 10 * time.Millisecond
	for {
		select {
		case <-c.done:
			return nil
		default:
		}
		conn, err := c.dial()
		if err == nil {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.closed {
				conn.Close()
				return nil
			}
			c.cur = conn
			c.gen++
			return conn
		}
		t := time.NewTimer(backoff)
		select {
		case <-c.done:
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, time.Second)
	}
}

// reregister re-sends WATCH for every watch on a fresh connection. Failures
// are ignored: a broken connection is noticed by its reader, and a watch the
// daemon now refuses stays registered here, to be retried on the next connect.
func (c *Client) reregister(conn io.ReadWriteCloser) {
	c.mu.Lock()
	ws := make([]*Watch, 0, len(c.watches))
	for _, w := range c.watches {
		ws = append(ws, w)
	}
	c.mu.Unlock()
	cl := getCall()
	defer callPool.Put(cl)
	for _, w := range ws {
		cl.req.Reset()
		cl.req.AddArg(w.path)
		cl.req.AddArg(w.token)
		if c.roundTrip(cl, conn, OpWatch, 0) == errConnLost {
			return
		}
	}
}

// read is the reader goroutine of one connection. When the connection
// fails it retires it, failing the calls in flight, and closes done.
//
// It reads through a buffer: xenstore sends watch events in bursts (a
// toolstack's transaction fires one per key it wrote, a guest's creation
// dozens), and one read(2) then takes every queued message that fits, from
// a socket or from /dev/xen/xenbus alike, where reading each message's
// header and payload apart costs two system calls per message, which a
// PV domain pays dearly.
func (c *Client) read(conn io.ReadWriteCloser, done chan<- struct{}) {
	defer close(done)
	buf := make([]byte, MaxPayload)
	r := bufio.NewReaderSize(conn, 4*(HeaderSize+MaxPayload))
	for {
		h, p, err := ReadMessage(r, buf)
		if err != nil {
			c.lost(conn, err)
			return
		}
		if h.Op == OpWatchEvent {
			c.event(p)
			continue
		}
		c.mu.Lock()
		cl := c.pending[h.ReqID]
		delete(c.pending, h.ReqID)
		c.mu.Unlock()
		if cl == nil {
			continue // a reply nobody waits for: ignore it
		}
		cl.h = h
		copy(cl.resp[:], p)
		cl.err = nil
		cl.done <- struct{}{}
	}
}

// event hands a WATCH_EVENT (path\0token\0) to the watch owning the token.
func (c *Client) event(p []byte) {
	path, rest, ok := NextArg(p)
	if !ok {
		return
	}
	token, _, ok := NextArg(rest)
	if !ok {
		return
	}
	c.mu.Lock()
	w := c.watches[string(token)]
	c.mu.Unlock()
	if w != nil {
		w.events.Push(string(path))
	}
}

// waitConn returns the usable connection, waiting through a reconnect.
func (c *Client) waitConn() (io.ReadWriteCloser, uint64, error) {
	for {
		c.mu.Lock()
		switch {
		case c.closed:
			c.mu.Unlock()
			return nil, 0, ErrClosed
		case c.usable:
			conn, gen := c.cur, c.gen
			c.mu.Unlock()
			return conn, gen, nil
		case c.broken != nil:
			err := c.broken
			c.mu.Unlock()
			return nil, 0, err
		}
		ready := c.ready
		c.mu.Unlock()
		<-ready
	}
}

// roundTrip sends cl.req on conn and waits for its reply. It returns nil
// (reply in cl.h and cl.resp) or errConnLost.
func (c *Client) roundTrip(cl *call, conn io.ReadWriteCloser, op Op, txid uint32) error {
	id := c.lastReq.Add(1)
	c.mu.Lock()
	if c.cur != conn {
		c.mu.Unlock()
		return errConnLost
	}
	cl.gen = c.gen
	c.pending[id] = cl
	c.mu.Unlock()
	if c.oneAtATime != nil {
		c.oneAtATime.Lock()
		defer c.oneAtATime.Unlock()
	}
	c.wmu.Lock()
	err := cl.req.Send(conn, Header{Op: op, ReqID: id, TxID: txid})
	c.wmu.Unlock()
	if err != nil {
		conn.Close() // the reader fails and fails this call with the rest
	}
	<-cl.done
	return cl.err
}

// exchange performs one request (already encoded in cl.req) with the retry
// rules of the Client doc. retryOK is an errno that means success when the
// request is a retry (0: none). path only labels errors.
func (c *Client) exchange(cl *call, op Op, tx *Tx, path string, retryOK syscall.Errno) error {
	if cl.req.over {
		return &Error{Op: op, Path: path, Err: syscall.E2BIG}
	}
	if tx == nil && len(c.lanes) > 0 && op != OpWatch && op != OpUnwatch && op != OpTransactionStart {
		if n := c.nextLane.Add(1) % uint32(len(c.lanes)+1); n > 0 {
			return c.lanes[n-1].exchange(cl, op, nil, path, retryOK)
		}
	}
	for attempt := 0; ; attempt++ {
		conn, gen, err := c.waitConn()
		if err != nil {
			return err
		}
		var txid uint32
		if tx != nil {
			if tx.gen != gen {
				return &Error{Op: op, Path: path, Err: syscall.EAGAIN}
			}
			txid = tx.id
		}
		if err := c.roundTrip(cl, conn, op, txid); err != nil {
			if tx != nil {
				return &Error{Op: op, Path: path, Err: syscall.EAGAIN}
			}
			if attempt < maxPlainRetries {
				continue
			}
			return &Error{Op: op, Path: path, Err: syscall.EIO}
		}
		switch cl.h.Op {
		case op:
			return nil
		case OpError:
			e := ParseErrno(cl.reply())
			if attempt > 0 && e == retryOK {
				return nil
			}
			return &Error{Op: op, Path: path, Err: e}
		}
		return &Error{Op: op, Path: path, Err: syscall.EIO} // reply of another type
	}
}

// pathOp performs op on path ("path\0" request) and returns the call holding
// the reply; the caller must put it back in callPool.
func (c *Client) pathOp(op Op, tx *Tx, path string, retryOK syscall.Errno) (*call, error) {
	cl := getCall()
	cl.req.AddArg(path)
	if err := c.exchange(cl, op, tx, path, retryOK); err != nil {
		callPool.Put(cl)
		return nil, err
	}
	return cl, nil
}

func (c *Client) read1(tx *Tx, path string) (string, error) {
	cl, err := c.pathOp(OpRead, tx, path, 0)
	if err != nil {
		return "", err
	}
	v := string(cl.reply())
	callPool.Put(cl)
	return v, nil
}

func (c *Client) write(tx *Tx, path, value string) error {
	cl := getCall()
	cl.req.AddArg(path)
	cl.req.AddString(value)
	err := c.exchange(cl, OpWrite, tx, path, 0)
	callPool.Put(cl)
	return err
}

func (c *Client) ack(op Op, tx *Tx, path string, retryOK syscall.Errno) error {
	cl, err := c.pathOp(op, tx, path, retryOK)
	if err == nil {
		callPool.Put(cl)
	}
	return err
}

func (c *Client) directory(tx *Tx, path string) ([]string, error) {
	cl, err := c.pathOp(OpDirectory, tx, path, 0)
	if err == nil {
		names := splitArgs(nil, cl.reply())
		callPool.Put(cl)
		return names, nil
	}
	if !errors.Is(err, syscall.E2BIG) {
		return nil, err
	}
	return c.directoryPart(tx, path)
}

// directoryPart lists a directory too big for one reply, chunk by chunk,
// restarting when the node's generation (first argument of every chunk)
// changes in between. The last chunk ends with an extra NUL.
func (c *Client) directoryPart(tx *Tx, path string) ([]string, error) {
	cl := getCall()
	defer callPool.Put(cl)
	var gen string
	var names []string
	off := 0
	for {
		cl.req.Reset()
		cl.req.AddArg(path)
		cl.req.AddUint(uint64(off))
		if err := c.exchange(cl, OpDirectoryPart, tx, path, 0); err != nil {
			return nil, err
		}
		g, rest, ok := NextArg(cl.reply())
		if !ok {
			return nil, &Error{Op: OpDirectoryPart, Path: path, Err: syscall.EIO}
		}
		if off == 0 {
			gen = string(g)
		} else if string(g) != gen {
			names, off = names[:0], 0
			continue
		}
		last := len(rest) == 0 || len(rest) >= 2 && rest[len(rest)-2] == 0
		if last && len(rest) > 0 {
			rest = rest[:len(rest)-1]
		}
		off += len(rest)
		names = splitArgs(names, rest)
		if last || len(rest) == 0 {
			return names, nil
		}
	}
}

// splitArgs appends the NUL-terminated strings of p to dst.
func splitArgs(dst []string, p []byte) []string {
	for len(p) > 0 {
		arg, rest, ok := NextArg(p)
		if !ok {
			arg, rest = p, nil
		}
		dst = append(dst, string(arg))
		p = rest
	}
	return dst
}

// Read returns the value of the node at path.
func (c *Client) Read(path string) (string, error) { return c.read1(nil, path) }

// Write sets the value of the node at path, creating it and any missing
// parents.
func (c *Client) Write(path, value string) error { return c.write(nil, path, value) }

// Mkdir creates the node at path (and missing parents) with an empty value;
// an existing node is left alone.
func (c *Client) Mkdir(path string) error { return c.ack(OpMkdir, nil, path, 0) }

// Rm removes the node at path and everything below it. Removing a missing
// node whose parent exists succeeds.
func (c *Client) Rm(path string) error { return c.ack(OpRm, nil, path, syscall.ENOENT) }

// Directory lists the names of the children of path.
func (c *Client) Directory(path string) ([]string, error) { return c.directory(nil, path) }

// GetPerms returns the permissions of path; the first entry is the owner's.
func (c *Client) GetPerms(path string) ([]Perm, error) {
	cl, err := c.pathOp(OpGetPerms, nil, path, 0)
	if err != nil {
		return nil, err
	}
	perms, err := ParsePerms(cl.reply())
	callPool.Put(cl)
	if err != nil {
		return nil, &Error{Op: OpGetPerms, Path: path, Err: syscall.EIO}
	}
	return perms, nil
}

// SetPerms replaces the permissions of path; perms[0] is the owner and the
// default access of unlisted domains.
func (c *Client) SetPerms(path string, perms []Perm) error { return c.setPerms(nil, path, perms) }

func (c *Client) setPerms(tx *Tx, path string, perms []Perm) error {
	cl := getCall()
	defer callPool.Put(cl)
	cl.req.AddArg(path)
	var b [16]byte
	for _, p := range perms {
		cl.req.AddBytes(AppendPerm(b[:0], p))
		cl.req.AddString("\x00")
	}
	return c.exchange(cl, OpSetPerms, tx, path, 0)
}

// GetDomainPath returns the home path of domain dom (/local/domain/<dom>).
func (c *Client) GetDomainPath(dom uint32) (string, error) {
	cl := getCall()
	cl.req.AddUint(uint64(dom))
	defer callPool.Put(cl)
	if err := c.exchange(cl, OpGetDomainPath, nil, "", 0); err != nil {
		return "", err
	}
	p, _, ok := NextArg(cl.reply())
	if !ok {
		p = cl.reply()
	}
	return string(p), nil
}

// parseTxID parses a TRANSACTION_START reply.
func parseTxID(p []byte) (uint32, bool) {
	if arg, _, ok := NextArg(p); ok {
		p = arg
	}
	id, err := strconv.ParseUint(string(p), 10, 32)
	return uint32(id), err == nil && id != 0
}
