package blkif

import "sync/atomic"

// Indexes is the header of a shared blkif ring: the producer and event
// indexes both sides update concurrently. It is only accessed with atomic
// loads and stores, which on amd64 also give the ordering the ring
// protocol's barriers ask for.
type Indexes struct {
	reqProd  uint32
	reqEvent uint32
	rspProd  uint32
	rspEvent uint32
}

func (h *Indexes) ReqProd() uint32      { return atomic.LoadUint32(&h.reqProd) }
func (h *Indexes) ReqEvent() uint32     { return atomic.LoadUint32(&h.reqEvent) }
func (h *Indexes) RspProd() uint32      { return atomic.LoadUint32(&h.rspProd) }
func (h *Indexes) RspEvent() uint32     { return atomic.LoadUint32(&h.rspEvent) }
func (h *Indexes) SetReqProd(v uint32)  { atomic.StoreUint32(&h.reqProd, v) }
func (h *Indexes) SetReqEvent(v uint32) { atomic.StoreUint32(&h.reqEvent, v) }
func (h *Indexes) SetRspProd(v uint32)  { atomic.StoreUint32(&h.rspProd, v) }
func (h *Indexes) SetRspEvent(v uint32) { atomic.StoreUint32(&h.rspEvent, v) }
