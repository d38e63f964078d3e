// Package evqueue is the bounded, de-duplicating FIFO that carries
// xenstore watch events, on both sides of the wire: the client (package
// xs) queues each watch's events for its callback, the Go xenstored
// (xensim/xenstored) queues each connection's events for its writer.
//
// A value already queued is not queued again, and the queue never holds
// more than its bound (XSA-349: a guest must not make its backend, or the
// daemon, queue without limit). What a full queue does depends on the
// side: xenstored drops new events, as the C daemon does for domains that
// do not read theirs; a client's queue collapses into one "rescan
// everything" event, since a dropped event would be a missed change.
package evqueue

import "sync"

// Queue is a bounded FIFO of distinct values, with one consumer blocking
// in Pop. It is safe for concurrent use.
type Queue[T comparable] struct {
	mu     sync.Mutex
	ring   []T
	head   int
	n      int
	queued map[T]struct{}
	// all is what a full collapsing queue becomes; collapsed says it has
	// (and that new values are dropped until all is taken).
	all       T
	collapses bool
	collapsed bool
	closed    bool
	wake      chan struct{} // cap 1: wakes Pop
}

// New returns a queue of at most max values; when it is full, Push drops
// the new value.
func New[T comparable](max int) *Queue[T] {
	return &Queue[T]{ring: make([]T, max), queued: make(map[T]struct{}), wake: make(chan struct{}, 1)}
}

// NewCollapsing returns a queue of at most max values; when it is full,
// everything queued is replaced by the one value all, and Push drops new
// values until Pop has taken it.
func NewCollapsing[T comparable](max int, all T) *Queue[T] {
	q := New[T](max)
	q.all, q.collapses = all, true
	return q
}

// Push queues v unless it is queued already, the queue is closed, or (see
// New, NewCollapsing) full.
func (q *Queue[T]) Push(v T) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || q.collapsed {
		return
	}
	if _, ok := q.queued[v]; ok {
		return
	}
	switch {
	case q.n < len(q.ring):
		q.push(v)
	case q.collapses:
		clear(q.queued)
		clear(q.ring)
		q.head, q.n = 0, 0
		q.collapsed = true
		q.push(q.all)
	default:
		return
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *Queue[T]) push(v T) {
	q.ring[(q.head+q.n)%len(q.ring)] = v
	q.n++
	q.queued[v] = struct{}{}
}

// Pop takes the oldest value, waiting for one. Once the queue is closed it
// returns false at once, dropping what is still queued.
func (q *Queue[T]) Pop() (T, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.n == 0 && !q.closed {
		q.mu.Unlock()
		<-q.wake
		q.mu.Lock()
	}
	var zero T
	if q.closed {
		return zero, false
	}
	v := q.ring[q.head]
	q.ring[q.head] = zero
	q.head = (q.head + 1) % len(q.ring)
	q.n--
	delete(q.queued, v)
	q.collapsed = false
	return v, true
}

// Len returns the number of values queued.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// Close makes Pop return false and Push drop everything.
func (q *Queue[T]) Close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}
