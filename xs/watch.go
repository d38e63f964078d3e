package xs

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
)

// watchQueueMax bounds the distinct paths queued for one watch (XSA-349).
const watchQueueMax = 256

// Watch is a registered xenstore watch. Its events are queued, de-duplicated
// by path and bounded: when more than watchQueueMax distinct paths wait, the
// queue collapses into one event for the watched path itself, meaning
// "something below changed, rescan". Events run fn one at a time on a
// goroutine owned by the watch, so fn may call the Client (even Close).
type Watch struct {
	c     *Client
	path  string
	token string
	fn    func(path string)

	mu       sync.Mutex
	ring     [watchQueueMax]string // FIFO of pending paths
	head, n  int
	queued   map[string]struct{}
	overflow bool // queue holds only the rescan event; drop others
	closed   bool
	wake     chan struct{} // cap 1
	exited   chan struct{}
	goid     atomic.Uint64 // id of the goroutine running fn
}

// Watch registers a watch on path (absolute, relative to the connection's
// domain home, or a special @name) under token, which must be unique on
// this Client (EEXIST otherwise). fn receives the changed path as xenstored
// reports it; the event xenstored fires at registration is delivered too.
func (c *Client) Watch(path, token string, fn func(path string)) (*Watch, error) {
	w := &Watch{
		c: c, path: path, token: token, fn: fn,
		queued: make(map[string]struct{}),
		wake:   make(chan struct{}, 1),
		exited: make(chan struct{}),
	}
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return nil, ErrClosed
	case c.watches[token] != nil:
		c.mu.Unlock()
		return nil, &Error{Op: OpWatch, Path: path, Err: syscall.EEXIST}
	}
	c.watches[token] = w // before WATCH: its first event may beat the reply
	c.mu.Unlock()
	go w.run()
	// EEXIST means a reconnect re-registered the watch before this request
	// went out: tokens are unique per Client, so the pair is ours.
	if err := c.watchOp(OpWatch, w); err != nil && !errors.Is(err, syscall.EEXIST) {
		c.forget(w)
		w.stop()
		return nil, err
	}
	return w, nil
}

func (c *Client) watchOp(op Op, w *Watch) error {
	cl := getCall()
	defer callPool.Put(cl)
	cl.req.AddArg(w.path)
	cl.req.AddArg(w.token)
	return c.exchange(cl, op, nil, w.path, 0)
}

// forget drops w from the token table; it reports whether w was there.
func (c *Client) forget(w *Watch) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.watches[w.token] != w {
		return false
	}
	delete(c.watches, w.token)
	return true
}

// Close unregisters the watch. After it returns fn is not called again (when
// called from fn itself, the running fn is the last one).
func (w *Watch) Close() error {
	var err error
	if w.c.forget(w) {
		// ENOENT: the daemon lost the watch already (a restart whose
		// re-registration failed).
		err = w.c.watchOp(OpUnwatch, w)
		if err == ErrClosed || errors.Is(err, syscall.ENOENT) {
			err = nil
		}
	}
	w.stop()
	return err
}

// Path returns the watched path as registered.
func (w *Watch) Path() string { return w.path }

// enqueue queues an event for path unless it is already queued.
func (w *Watch) enqueue(path []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.overflow {
		return
	}
	if _, ok := w.queued[string(path)]; ok {
		return
	}
	if w.n == watchQueueMax {
		clear(w.queued)
		clear(w.ring[:])
		w.head, w.n = 0, 0
		w.overflow = true
		w.push(w.path)
	} else {
		w.push(string(path))
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *Watch) push(p string) {
	w.ring[(w.head+w.n)%watchQueueMax] = p
	w.n++
	w.queued[p] = struct{}{}
}

// run delivers queued events to fn until the watch stops.
func (w *Watch) run() {
	w.goid.Store(goid())
	defer close(w.exited)
	for {
		w.mu.Lock()
		for w.n == 0 && !w.closed {
			w.mu.Unlock()
			<-w.wake
			w.mu.Lock()
		}
		if w.closed {
			w.mu.Unlock()
			return
		}
		p := w.ring[w.head]
		w.ring[w.head] = ""
		w.head = (w.head + 1) % watchQueueMax
		w.n--
		delete(w.queued, p)
		w.overflow = false
		w.mu.Unlock()
		w.fn(p)
	}
}

// stop ends the delivery goroutine and waits for it, unless called from fn.
func (w *Watch) stop() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	if goid() != w.goid.Load() {
		<-w.exited
	}
}

// goid returns the current goroutine's id, parsed from its stack header
// ("goroutine 18 [running]:"). Close uses it to tell a call from inside fn,
// which must not wait for fn to return.
func goid() uint64 {
	var b [64]byte
	s := b[:runtime.Stack(b[:], false)]
	var id uint64
	for _, c := range s[len("goroutine "):] {
		if c < '0' || c > '9' {
			break
		}
		id = id*10 + uint64(c-'0')
	}
	return id
}
