package blkback

import (
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"blkdom/uring"
)

// The I/O engines. A ring's loop queues each request's data transfer and
// flush on its engine and takes the completions back; the engine only
// moves data. EngineUring hands the kernel a whole batch of operations in
// one system call and keeps every request of the ring in flight without a
// thread per request; EngineWorkers does each operation as one blocking
// preadv, pwritev or fdatasync on a pool of goroutines, and serves where
// io_uring cannot be had (a kernel without it, or one that forbids it).
const (
	EngineUring   = "io_uring"
	EngineWorkers = "workers"
)

// Engines lists the engine names, for flags and keys.
var Engines = []string{EngineUring, EngineWorkers}

// engine moves one ring's data. Everything but kick is called from the
// ring's loop only.
type engine interface {
	// readv, writev and fdatasync queue an operation for slot; it
	// completes through reap with a byte count or a negated errno.
	readv(fd int, iov []unix.Iovec, off int64, slot uint16)
	writev(fd int, iov []unix.Iovec, off int64, slot uint16)
	fdatasync(fd int, slot uint16)
	// submit hands the queued operations over and, when wait is true,
	// blocks until a completion is ready or kick is called.
	submit(wait bool) error
	// reap passes every ready completion to the ring and says how many.
	reap() int
	// ready says whether a completion is waiting, cheaply.
	ready() bool
	// kick ends a submit that waits; a kick with nobody waiting ends
	// the next wait at once. Safe from any goroutine.
	kick()
	// watch makes the engine wait for fd's readability too, calling
	// fired from reap when fd is readable; false when this engine cannot
	// (the caller then turns events into kicks itself).
	watch(fd int, fired func()) bool
	name() string
	// close ends the engine once nothing is in flight.
	close() error
}

// newEngine makes the engine kind for a ring of slots slots whose
// completions go to complete. When io_uring cannot be had it returns the
// workers engine, and why.
func newEngine(kind string, slots uint32, workers int, complete func(slot uint16, res int32)) (engine, error) {
	var why error
	if kind != EngineWorkers {
		e, err := newUringEngine(slots, complete)
		if err == nil {
			return e, nil
		}
		why = err
	}
	return newWorkersEngine(slots, max(workers, 1), complete), why
}

// errnoOf is the error of a negated-errno result, or nil.
func errnoOf(res int32) error {
	if res >= 0 {
		return nil
	}
	return syscall.Errno(-res)
}

// uringEngine is EngineUring. Kicks are an eventfd that always has a read
// queued on the ring, so one io_uring_enter waits for both.
type uringEngine struct {
	ring     *uring.Ring
	efd      int
	watched  int     // the descriptor polled for fired, or -1
	fired    func()  // called when watched is readable
	kickBuf  [8]byte // the queued read's buffer
	one      [8]byte // what a kick writes: 1
	complete func(slot uint16, res int32)
	onCQE    func(tag uint64, res int32) // e.cqe, made once
}

// kickTag marks the eventfd read among the completions, watchTag the
// watched descriptor's poll; slots are 16 bits.
const (
	kickTag  = 1 << 32
	watchTag = 2 << 32
)

func newUringEngine(slots uint32, complete func(uint16, int32)) (*uringEngine, error) {
	// Each slot has at most one operation queued, the kick its read and
	// the watched descriptor its poll.
	r, err := uring.New(slots + 2)
	if err != nil {
		return nil, err
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	e := &uringEngine{ring: r, efd: efd, watched: -1, complete: complete}
	e.one[0] = 1 // little-endian 1; the value is never read
	e.onCQE = e.cqe
	e.queueKickRead()
	return e, nil
}

func (e *uringEngine) queueKickRead() { e.must(e.ring.Read(e.efd, e.kickBuf[:], kickTag)) }

// must turns a full submission queue, which the sizing rules out, into a
// panic: the ring's guard disconnects the device.
func (e *uringEngine) must(err error) {
	if err != nil {
		panic(err)
	}
}

func (e *uringEngine) readv(fd int, iov []unix.Iovec, off int64, slot uint16) {
	e.must(e.ring.Readv(fd, iov, off, uint64(slot)))
}

func (e *uringEngine) writev(fd int, iov []unix.Iovec, off int64, slot uint16) {
	e.must(e.ring.Writev(fd, iov, off, uint64(slot)))
}

func (e *uringEngine) fdatasync(fd int, slot uint16) { e.must(e.ring.Fdatasync(fd, uint64(slot))) }

func (e *uringEngine) submit(wait bool) error { return e.ring.Submit(wait) }

func (e *uringEngine) reap() int { return e.ring.Reap(e.onCQE) }

func (e *uringEngine) cqe(tag uint64, res int32) {
	switch tag {
	case kickTag:
		e.queueKickRead()
	case watchTag:
		// fired takes what made the descriptor readable; the poll is
		// queued again after it, so it completes only for what comes
		// next.
		e.fired()
		e.must(e.ring.PollIn(e.watched, watchTag))
	default:
		e.complete(uint16(tag), res)
	}
}

func (e *uringEngine) watch(fd int, fired func()) bool {
	e.watched, e.fired = fd, fired
	e.must(e.ring.PollIn(fd, watchTag))
	return true
}

func (e *uringEngine) ready() bool { return e.ring.Ready() }

func (e *uringEngine) kick() { unix.Write(e.efd, e.one[:]) }

func (e *uringEngine) name() string { return EngineUring }

func (e *uringEngine) close() error {
	err := e.ring.Close() // cancels the kick's read
	unix.Close(e.efd)
	return err
}

// workersEngine is EngineWorkers: goroutines doing one blocking system
// call per operation.
type workersEngine struct {
	ops      []workerOp // by slot
	queued   []uint16   // operations not yet handed to the workers
	work     chan uint16
	complete func(uint16, int32)
	wg       sync.WaitGroup

	mu         sync.Mutex
	done, back []workerDone // completions, and the list reap last emptied
	ndone      atomic.Int32
	wake       chan struct{} // capacity 1: a completion or a kick
}

type workerOp struct {
	kind uint8 // opRead, opWrite or opSync
	fd   int
	iov  []unix.Iovec
	off  int64
}

type workerDone struct {
	slot uint16
	res  int32
}

const (
	opRead uint8 = iota
	opWrite
	opSync
)

func newWorkersEngine(slots uint32, workers int, complete func(uint16, int32)) *workersEngine {
	e := &workersEngine{ops: make([]workerOp, slots), queued: make([]uint16, 0, slots),
		work: make(chan uint16, slots), complete: complete, done: make([]workerDone, 0, slots),
		back: make([]workerDone, 0, slots), wake: make(chan struct{}, 1)}
	e.wg.Add(workers)
	for range workers {
		go e.worker()
	}
	return e
}

func (e *workersEngine) queue(slot uint16, op workerOp) {
	e.ops[slot] = op
	e.queued = append(e.queued, slot)
}

func (e *workersEngine) readv(fd int, iov []unix.Iovec, off int64, slot uint16) {
	e.queue(slot, workerOp{kind: opRead, fd: fd, iov: iov, off: off})
}

func (e *workersEngine) writev(fd int, iov []unix.Iovec, off int64, slot uint16) {
	e.queue(slot, workerOp{kind: opWrite, fd: fd, iov: iov, off: off})
}

func (e *workersEngine) fdatasync(fd int, slot uint16) {
	e.queue(slot, workerOp{kind: opSync, fd: fd})
}

func (e *workersEngine) submit(wait bool) error {
	for _, s := range e.queued {
		e.work <- s // never blocks: work has room for every slot
	}
	e.queued = e.queued[:0]
	if wait && e.ndone.Load() == 0 {
		<-e.wake
	}
	return nil
}

func (e *workersEngine) worker() {
	defer e.wg.Done()
	for s := range e.work {
		op := &e.ops[s]
		var n int
		var err error
		switch op.kind {
		case opRead:
			n, err = preadv(op.fd, op.iov, op.off)
		case opWrite:
			n, err = pwritev(op.fd, op.iov, op.off)
		case opSync:
			err = unix.Fdatasync(op.fd)
		}
		res := int32(n)
		if errno, ok := err.(syscall.Errno); ok {
			res = -int32(errno)
		} else if err != nil {
			res = -int32(syscall.EIO)
		}
		e.mu.Lock()
		e.done = append(e.done, workerDone{s, res})
		e.ndone.Add(1)
		e.mu.Unlock()
		e.kick()
	}
}

func (e *workersEngine) reap() int {
	if e.ndone.Load() == 0 {
		return 0
	}
	e.mu.Lock()
	got := e.done
	e.done, e.back = e.back[:0], got
	e.ndone.Store(0)
	e.mu.Unlock()
	for _, d := range got {
		e.complete(d.slot, d.res)
	}
	return len(got)
}

func (e *workersEngine) ready() bool { return e.ndone.Load() > 0 }

func (e *workersEngine) kick() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *workersEngine) watch(int, func()) bool { return false }

func (e *workersEngine) name() string { return EngineWorkers }

func (e *workersEngine) close() error {
	close(e.work)
	e.wg.Wait()
	return nil
}
