package xs

import (
	"errors"
	"syscall"

	"blkdom/xs/evqueue"
)

// watchQueueMax bounds the distinct paths queued for one watch (XSA-349).
const watchQueueMax = 256

// Watch is a registered xenstore watch. Its events are queued, de-duplicated
// by path and bounded: when more than watchQueueMax distinct paths wait, the
// queue collapses into one event for the watched path itself, meaning
// "something below changed, rescan". Events run fn one at a time on a
// goroutine owned by the watch.
//
// fn may call the Client's methods, with two exceptions that would wait
// for fn itself to return: Client.Close, and its own watch's Close. To end
// its own watch, fn calls CloseFromCallback.
type Watch struct {
	c     *Client
	path  string
	token string
	fn    func(path string)

	events *evqueue.Queue[string] // changed paths not yet given to fn
	exited chan struct{}          // closed when run has returned
}

// Watch registers a watch on path (absolute, relative to the connection's
// domain home, or a special @name) under token, which must be unique on
// this Client (EEXIST otherwise). fn receives the changed path as xenstored
// reports it; the event xenstored fires at registration is delivered too.
func (c *Client) Watch(path, token string, fn func(path string)) (*Watch, error) {
	w := &Watch{
		c: c, path: path, token: token, fn: fn,
		events: evqueue.NewCollapsing(watchQueueMax, path),
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
		<-w.exited
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

// Close unregisters the watch and waits for a running fn to return: after
// it returns fn is not called again. fn itself must not call it (it would
// wait for itself): it calls CloseFromCallback.
func (w *Watch) Close() error {
	err := w.unregister()
	w.stop()
	<-w.exited
	return err
}

// CloseFromCallback is Close for the watch's own fn: it unregisters the
// watch without waiting for fn, and the running call is the last one. From
// anywhere else, call Close.
func (w *Watch) CloseFromCallback() error {
	err := w.unregister()
	w.stop()
	return err
}

// unregister drops the watch from the Client and from xenstored.
func (w *Watch) unregister() error {
	if !w.c.forget(w) {
		return nil // closed already, or by the Client's Close
	}
	// ENOENT: the daemon lost the watch already (a restart whose
	// re-registration failed).
	err := w.c.watchOp(OpUnwatch, w)
	if err == ErrClosed || errors.Is(err, syscall.ENOENT) {
		err = nil
	}
	return err
}

// Path returns the watched path as registered.
func (w *Watch) Path() string { return w.path }

// run delivers queued events to fn until the watch stops.
func (w *Watch) run() {
	defer close(w.exited)
	for {
		p, ok := w.events.Pop()
		if !ok {
			return
		}
		w.fn(p)
	}
}

// stop tells the delivery goroutine to end after the event it is
// delivering, if any; exited closes when it has.
func (w *Watch) stop() { w.events.Close() }
