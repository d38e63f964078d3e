package blkback

import (
	"sync/atomic"

	"blkdom/blkif"
)

// deviceStats counts a device's requests the way Linux blkback's sysfs
// statistics do, plus errors. Counters only grow; every ring of a device
// adds to the same counters.
type deviceStats struct {
	ooReq   atomic.Uint64 // requests that had to wait for a free slot (Linux's oo_req)
	rdReq   atomic.Uint64
	wrReq   atomic.Uint64
	fReq    atomic.Uint64 // flushes and barriers
	dsReq   atomic.Uint64 // discards
	rdSect  atomic.Uint64
	wrSect  atomic.Uint64
	errors  atomic.Uint64 // requests that failed while executing
	invalid atomic.Uint64 // requests refused by validation
}

// countRequest counts a validated request as it starts executing.
func (st *deviceStats) countRequest(req *blkif.Request) {
	var sectors uint64
	for _, s := range req.Segs[:req.NSegs] {
		sectors += uint64(s.Last-s.First) + 1
	}
	switch req.DataOp {
	case blkif.OpRead:
		st.rdReq.Add(1)
		st.rdSect.Add(sectors)
	case blkif.OpWrite:
		st.wrReq.Add(1)
		st.wrSect.Add(sectors)
	case blkif.OpWriteBarrier, blkif.OpFlushDiskcache:
		st.fReq.Add(1)
		st.wrSect.Add(sectors)
	case blkif.OpDiscard:
		st.dsReq.Add(1)
	}
}

func (st *deviceStats) countError()   { st.errors.Add(1) }
func (st *deviceStats) countInvalid() { st.invalid.Add(1) }
