package blkback

import (
	"sync/atomic"
	"unsafe"
)

// This file lays the ledger's header and entries over its mapped bytes.
// Their fields are stored atomically: a successor reads them after a kill
// at any instruction, and each store must land in the order written.

// ledgerHead is the start of a ledger: the ring's identity and the next
// ring position to take.
type ledgerHead struct {
	magic     atomic.Uint32
	entrySize atomic.Uint32
	slots     atomic.Uint32
	port      atomic.Uint32
	nrefs     atomic.Uint32
	reqCons   atomic.Uint32
	refs      [ledgerRefs]atomic.Uint32
}

// entry is the meta of one ledger entry; the ring slot's copy follows it.
type entry struct {
	pos    atomic.Uint32 // the ring position the request was taken from
	state  atomic.Uint32 // entryFree, entryTaken or entryAnswered
	rspPos atomic.Uint32 // with entryAnswered, the response's position
	_      uint32
}

const (
	ledgerHeadSize = int(unsafe.Sizeof(ledgerHead{}))
	entryMeta      = int(unsafe.Sizeof(entry{}))
)

// ledgerHeadOf is the header at the start of mem, which is page aligned
// (a mapping) or a Go allocation of at least ledgerHeadSize (8-aligned).
func ledgerHeadOf(mem []byte) *ledgerHead {
	return (*ledgerHead)(unsafe.Pointer(unsafe.SliceData(mem)))
}

// meta is entry i's meta; entries are 8-aligned (stride).
func (l *ledger) meta(i uint16) *entry {
	return (*entry)(unsafe.Pointer(&l.mem[ledgerHeadSize+int(i)*l.stride]))
}

// is says whether the header names ring id.
func (h *ledgerHead) is(id identity) bool {
	if h.magic.Load() != ledgerMagic || h.entrySize.Load() != uint32(id.entrySize) ||
		h.slots.Load() != id.slots || h.port.Load() != uint32(id.port) || h.nrefs.Load() != uint32(len(id.refs)) {
		return false
	}
	for i, r := range id.refs {
		if i >= ledgerRefs || h.refs[i].Load() != uint32(r) {
			return false
		}
	}
	return true
}

// set names ring id in an empty header.
func (h *ledgerHead) set(id identity) {
	h.entrySize.Store(uint32(id.entrySize))
	h.slots.Store(id.slots)
	h.port.Store(uint32(id.port))
	h.nrefs.Store(uint32(len(id.refs)))
	for i, r := range id.refs[:min(len(id.refs), ledgerRefs)] {
		h.refs[i].Store(uint32(r))
	}
	h.magic.Store(ledgerMagic)
}
