package blkback

import "sync/atomic"

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
func (st *deviceStats) countRequest(req *request) {
	var sectors uint64
	for _, s := range req.segs[:req.nsegs] {
		sectors += uint64(s.last-s.first) + 1
	}
	switch req.dataOp {
	case opRead:
		st.rdReq.Add(1)
		st.rdSect.Add(sectors)
	case opWrite:
		st.wrReq.Add(1)
		st.wrSect.Add(sectors)
	case opWriteBarrier, opFlushDiskcache:
		st.fReq.Add(1)
		st.wrSect.Add(sectors)
	case opDiscard:
		st.dsReq.Add(1)
	}
}

func (st *deviceStats) countError()   { st.errors.Add(1) }
func (st *deviceStats) countInvalid() { st.invalid.Add(1) }
