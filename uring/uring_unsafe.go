package uring

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file holds everything that touches the kernel's structures
// (include/uapi/linux/io_uring.h) and the raw system calls.

// Opcodes, flags and mmap offsets from io_uring.h.
const (
	opReadv     = 1
	opWritev    = 2
	opFsync     = 3
	opPollAdd   = 6
	opFallocate = 17
	opRead      = 22

	fsyncDatasync    = 1      // IORING_FSYNC_DATASYNC
	pollIn           = 0x1    // POLLIN, in poll32_events (the low half is poll_events on kernels before 5.9)
	enterGetEvents   = 1      // IORING_ENTER_GETEVENTS
	setupCoopTaskrun = 1 << 8 // IORING_SETUP_COOP_TASKRUN (5.19)
	featSingleMmap   = 1 << 0 // IORING_FEAT_SINGLE_MMAP (5.4)
	offSQRing        = 0      // IORING_OFF_SQ_RING
	offSQEs          = 0x10000000
)

// sqe is struct io_uring_sqe (64 bytes).
type sqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	_           uint64
}

// cqe is struct io_uring_cqe (16 bytes).
type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// sqOffsets is struct io_sqring_offsets.
type sqOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

// cqOffsets is struct io_cqring_offsets.
type cqOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// params is struct io_uring_params (120 bytes).
type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqOffsets
	cqOff                                                                  cqOffsets
}

func setup(entries uint32, p *params) (int, error) {
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(p)), 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), nil
}

// enter is io_uring_enter, an ordinary system call even when it does not
// wait for completions: a submission can still block (a buffered read on
// NFS may wait for the server inside it), and in a raw system call the Go
// runtime takes the blocked goroutine for a running one and may interrupt
// it with its preemption signal. With raw submissions, a guest's first
// buffered read from an NFS image failed in five of seven e2e runs of
// driver domains on NFS (29 Nov: TestNFSMove 2 of 2, TestLateRef 2 of 2,
// TestNFSOutage 1 of 3); with this call, none of the runs since did.
func enter(fd int, submit, min, flags uint32) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(fd), uintptr(submit), uintptr(min),
		uintptr(flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// ringBytes is the size of the one mapping that holds both queues' heads,
// tails and arrays.
func (p *params) ringBytes() int {
	return int(max(p.sqOff.array+p.sqEntries*4, p.cqOff.cqes+p.cqEntries*uint32(unsafe.Sizeof(cqe{}))))
}

// sqeBytes is the size of the submission entries' mapping.
func (p *params) sqeBytes() int { return int(p.sqEntries) * int(unsafe.Sizeof(sqe{})) }

// bind points r at the queues inside the shared memory, where p says.
func (r *Ring) bind(p *params) {
	base := unsafe.Pointer(unsafe.SliceData(r.ringMem))
	u32 := func(off uint32) *uint32 { return (*uint32)(unsafe.Add(base, off)) }
	r.sqHead, r.sqTail = u32(p.sqOff.head), u32(p.sqOff.tail)
	r.sqMask = *u32(p.sqOff.ringMask)
	r.cqHead, r.cqTail = u32(p.cqOff.head), u32(p.cqOff.tail)
	r.cqMask = *u32(p.cqOff.ringMask)
	r.cqes = unsafe.Slice((*cqe)(unsafe.Add(base, p.cqOff.cqes)), p.cqEntries)
	r.sqes = unsafe.Slice((*sqe)(unsafe.Pointer(unsafe.SliceData(r.sqeMem))), p.sqEntries)
	// The indirection array maps each queue position to the entry of the
	// same index, once: entries are always used in queue order.
	array := unsafe.Slice((*uint32)(unsafe.Add(base, p.sqOff.array)), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	r.tail = *r.sqTail
}

func (r *Ring) vectored(op uint8, fd int, iov []unix.Iovec, off int64, tag uint64) error {
	e := r.next()
	if e == nil {
		return ErrFull
	}
	e.opcode, e.fd, e.off, e.userData = op, int32(fd), uint64(off), tag
	e.addr, e.len = uint64(uintptr(unsafe.Pointer(unsafe.SliceData(iov)))), uint32(len(iov))
	return nil
}

func addrOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }
