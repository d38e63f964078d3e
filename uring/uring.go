// Package uring is the smallest io_uring blkdom needs: one submission
// queue and one completion queue shared with the kernel, filled and reaped
// by a single goroutine, with vectored reads and writes, fdatasync,
// fallocate, plain reads and poll as operations.
//
// It exists so that a ring of the block backend can keep every request of
// the guest in flight at once and hand the kernel a whole batch of them in
// one system call, instead of one blocking preadv or pwritev per request
// on a thread of its own. Nothing here allocates after New: operations
// point at memory the caller keeps alive until their completion is reaped.
//
// A Ring is not safe for concurrent use. Submit waits for completions in
// io_uring_enter, an ordinary system call to the Go runtime: the waiting
// goroutine keeps its thread, which is as a rule the one that submitted
// the operations, so the kernel finishes their completions (task work) in
// the thread that waits for them. In a Xen PV domain, where a system call
// or a thread switch costs tens of microseconds under emulation, that is
// the cheapest wait. Parking the goroutine in the runtime's network
// poller instead (as this package did until 29 Nov 2026) added an
// epoll_wait and the scheduler's work around each park, and left the
// runtime's monitor thread polling every 20 us after each wake-up: in a
// one-vCPU driver domain a lone 4 KiB read cost the domain 2.86-3.36 ms
// of CPU with the poller and 1.66-2.41 ms without (README, Speed). The
// wait stays cheap only with a second Go processor (GOMAXPROCS >= 2,
// which blkdom serve sets): with one, the runtime hands the processor of
// any system call that outlasts a 20 us tick of its monitor to another
// thread.
// The kernel-facing structures and the raw system calls live in
// uring_unsafe.go.
package uring

import (
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Ring is one io_uring instance.
type Ring struct {
	fd int

	// The submission queue: the kernel reads entries between sqHead and
	// sqTail; array maps queue positions to entries (identity here).
	sqHead, sqTail *uint32
	sqMask         uint32
	sqes           []sqe
	tail           uint32 // the local tail, published by Submit
	pending        uint32 // entries filled and not yet handed to the kernel

	// The completion queue: the kernel fills between cqHead and cqTail.
	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           []cqe

	ringMem, sqeMem []byte
}

// ErrFull reports a submission queue with no free entry: Submit first.
var ErrFull = errors.New("uring: submission queue full")

// New sets up a ring with room for at least entries operations in flight
// (the kernel rounds up to a power of two). On a kernel without io_uring,
// or one that forbids it, it fails with the kernel's error (ENOSYS, EPERM).
func New(entries uint32) (*Ring, error) {
	// No IORING_SETUP_COOP_TASKRUN: completions must reach the queue
	// while the ring's thread polls it, not only when it next enters the
	// kernel.
	var p params
	fd, err := setup(entries, &p)
	if err != nil {
		return nil, fmt.Errorf("uring: setup: %w", err)
	}
	if p.features&featSingleMmap == 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("uring: kernel without IORING_FEAT_SINGLE_MMAP: %w", unix.ENOSYS)
	}
	r := &Ring{fd: fd}
	if r.ringMem, err = unix.Mmap(fd, offSQRing, p.ringBytes(), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("uring: mmap rings: %w", err)
	}
	if r.sqeMem, err = unix.Mmap(fd, offSQEs, p.sqeBytes(),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		unix.Munmap(r.ringMem)
		unix.Close(fd)
		return nil, fmt.Errorf("uring: mmap entries: %w", err)
	}
	r.bind(&p)
	return r, nil
}

// Close releases the ring. The kernel cancels whatever is still in
// flight; memory those operations named must stay valid until Close
// returns.
func (r *Ring) Close() error {
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	unix.Munmap(r.sqeMem)
	unix.Munmap(r.ringMem)
	return err
}

// next returns the next free submission entry, cleared, or nil when the
// queue is full.
func (r *Ring) next() *sqe {
	if r.tail-atomic.LoadUint32(r.sqHead) >= uint32(len(r.sqes)) {
		return nil
	}
	e := &r.sqes[r.tail&r.sqMask]
	*e = sqe{}
	r.tail++
	r.pending++
	return e
}

// Readv queues a vectored read of fd at off into iov, completing with tag.
func (r *Ring) Readv(fd int, iov []unix.Iovec, off int64, tag uint64) error {
	return r.vectored(opReadv, fd, iov, off, tag)
}

// Writev queues a vectored write of iov to fd at off, completing with tag.
func (r *Ring) Writev(fd int, iov []unix.Iovec, off int64, tag uint64) error {
	return r.vectored(opWritev, fd, iov, off, tag)
}

// Fdatasync queues an fdatasync of fd, completing with tag.
func (r *Ring) Fdatasync(fd int, tag uint64) error {
	e := r.next()
	if e == nil {
		return ErrFull
	}
	e.opcode, e.fd, e.opFlags, e.userData = opFsync, int32(fd), fsyncDatasync, tag
	return nil
}

// Fallocate queues fallocate(fd, mode, off, length), completing with tag.
func (r *Ring) Fallocate(fd int, mode uint32, off, length int64, tag uint64) error {
	e := r.next()
	if e == nil {
		return ErrFull
	}
	e.opcode, e.fd, e.off, e.addr, e.len, e.userData = opFallocate, int32(fd), uint64(off), uint64(length), mode, tag
	return nil
}

// Read queues a read of len(buf) bytes from fd (at its file position: for
// devices and eventfds), completing with tag.
func (r *Ring) Read(fd int, buf []byte, tag uint64) error {
	e := r.next()
	if e == nil {
		return ErrFull
	}
	e.opcode, e.fd, e.addr, e.len, e.userData = opRead, int32(fd), addrOf(buf), uint32(len(buf)), tag
	e.off = ^uint64(0) // the file's own position
	return nil
}

// PollIn queues a one-shot poll of fd for readability, completing with tag
// (and the ready events as result) once fd is readable: at once if it
// already is. A descriptor that is not itself waitable by io_uring (a
// non-blocking device) can be waited for this way in the same system call
// as the ring's other operations.
func (r *Ring) PollIn(fd int, tag uint64) error {
	e := r.next()
	if e == nil {
		return ErrFull
	}
	e.opcode, e.fd, e.opFlags, e.userData = opPollAdd, int32(fd), pollIn, tag
	return nil
}

// Pending is how many queued operations Submit has not handed over yet.
func (r *Ring) Pending() int { return int(r.pending) }

// Submit hands the queued operations to the kernel and, when wait is
// true, blocks until at least one completion is ready (or a signal ends
// the wait early, which is not an error: Reap then finds what is there).
func (r *Ring) Submit(wait bool) error {
	atomic.StoreUint32(r.sqTail, r.tail)
	var flags, min uint32
	if wait {
		flags, min = enterGetEvents, 1
	} else if r.pending == 0 {
		return nil
	}
	n, err := enter(r.fd, r.pending, min, flags)
	switch err {
	case nil, unix.EINTR:
		r.pending -= uint32(n)
		return nil
	case unix.EAGAIN, unix.EBUSY:
		return nil // the completion queue is full: the caller reaps first
	}
	return fmt.Errorf("uring: enter: %w", err)
}

// Reap calls fn for each ready completion with its tag and result (a byte
// count, or a negated errno) and returns how many there were.
func (r *Ring) Reap(fn func(tag uint64, res int32)) int {
	head := *r.cqHead // only this goroutine moves the head
	tail := atomic.LoadUint32(r.cqTail)
	n := 0
	for ; head != tail; head++ {
		c := &r.cqes[head&r.cqMask]
		tag, res := c.userData, c.res
		atomic.StoreUint32(r.cqHead, head+1) // the entry may be reused from here on
		fn(tag, res)
		n++
	}
	return n
}

// Ready reports whether a completion is waiting, without a system call.
func (r *Ring) Ready() bool {
	return *r.cqHead != atomic.LoadUint32(r.cqTail)
}

// Errno turns a negative completion result into its error, or nil.
func Errno(res int32) error {
	if res >= 0 {
		return nil
	}
	return unix.Errno(-res)
}
