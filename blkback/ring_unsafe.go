package blkback

import (
	"sync/atomic"
	"unsafe"
)

// ringIndexes is the header of a shared blkif ring: the producer and
// event indexes both sides update concurrently. It is only ever accessed
// with atomic loads and stores, which on amd64 also give the ordering the
// ring protocol's barriers ask for.
type ringIndexes struct {
	reqProd  uint32
	reqEvent uint32
	rspProd  uint32
	rspEvent uint32
}

// indexesOf returns the index header at the start of a mapped ring. mem is
// at least one page, page aligned.
func indexesOf(mem []byte) *ringIndexes {
	return (*ringIndexes)(unsafe.Pointer(unsafe.SliceData(mem)))
}

func (h *ringIndexes) loadReqProd() uint32    { return atomic.LoadUint32(&h.reqProd) }
func (h *ringIndexes) loadRspEvent() uint32   { return atomic.LoadUint32(&h.rspEvent) }
func (h *ringIndexes) storeReqEvent(v uint32) { atomic.StoreUint32(&h.reqEvent, v) }
func (h *ringIndexes) storeRspProd(v uint32)  { atomic.StoreUint32(&h.rspProd, v) }
