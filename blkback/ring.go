package blkback

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"blkdom/blkif"
	"blkdom/evtchn"
	"blkdom/gnttab"
)

// This file is the data path: a request's way from its ring slot to the
// disk and back, top to bottom.
//
//	run        waits for a kick: an event from the frontend, or a slot freed
//	service    drains the ring in bounded batches (XSA-332), re-arms
//	consume    copies one slot out ONCE (XSA-155), parses, validates
//	worker     loads indirect segments, gets the guest's pages (pages.go),
//	           moves the data, releases the pages
//	respond    writes the response field by field (XSA-216), notifies
//
// Barriers fence the ring: nothing after a WRITE_BARRIER starts before
// everything before it finished, and the barrier itself is durable before
// its response.

// ringParams is what a connection negotiated for one ring.
type ringParams struct {
	dom     uint32       // the frontend's domain
	disk    uint32       // the disk's id for the probes
	probes  Probes       // or nil
	abi     blkif.ABI    // its request layout
	refs    []gnttab.Ref // the ring's pages
	port    evtchn.Port  // the frontend's event channel port
	geo     *geometry    // the disk, shared by the connection's rings
	workers int          // goroutines doing I/O for this ring
	stats   *deviceStats // the device's counters
	policy  cachePolicy  // how data reaches the guest's pages
	// persistent is the size of the persistent-grant cache, 0 when
	// persistent grants were not negotiated.
	persistent int
	// failed is called once, from the ring's goroutine, when the frontend
	// broke the ring protocol; the device then disconnects.
	failed func(error)
}

// slot is a request taken off the ring and not yet answered.
type slot struct {
	index uint16
	raw   []byte // the private copy of the ring slot
	req   blkif.Request
	taken time.Time // when it came off the ring
}

// errBogusRing reports a frontend that published more requests than its
// ring holds: hostile or broken, so the ring stops.
var errBogusRing = errors.New("frontend provided bogus ring requests")

// ring serves one shared ring of a connected device.
type ring struct {
	ringParams
	img     *image
	grants  Grants
	events  Events
	local   evtchn.Port
	mapping gnttab.Mapping // the ring pages themselves
	idx     *blkif.Indexes
	entries []byte // the slot array after the index header
	size    uint32 // slots, a power of two
	reqCons uint32 // next request to consume; owned by run
	cache   *grantCache

	rspMu      sync.Mutex
	rspProdPvt uint32 // next response slot; guarded by rspMu
	rspPushed  uint32 // the rsp_prod last published; guarded by rspMu

	slots    []slot
	free     chan uint16 // slots not in flight
	work     chan uint16 // slots handed to the workers
	inflight atomic.Int32

	// fenced stops consumption while a barrier waits for the requests
	// before it, and while the barrier itself runs. held is the barrier
	// waiting to start, or nil.
	fenced bool
	held   *slot

	kick      chan struct{} // wakes run; capacity 1 coalesces wakeups
	unmaskDue atomic.Bool   // an event arrived and its port is masked
	stop      chan struct{} // closed to stop run
	runDone   chan error    // run's fatal error, or nil; closed when run returns
	workersWG sync.WaitGroup
	waiterWG  sync.WaitGroup
}

// newRing maps the ring and binds its event channel; start then serves it.
// The ring owns grants and events from then on; on error nothing stays
// mapped or bound and the caller still owns them.
func newRing(p ringParams, grants Grants, events Events) (*ring, error) {
	r := &ring{ringParams: p, grants: grants, events: events}
	m, err := grants.Map(p.dom, p.refs, true)
	if err != nil {
		return nil, fmt.Errorf("map ring: %w", err)
	}
	r.mapping = m
	r.idx = blkif.IndexesOf(m.Mem)
	r.entries = m.Mem[blkif.RingHeaderSize:]
	r.size = p.abi.RingEntries(len(p.refs))
	local, err := events.BindInterdomain(p.dom, p.port)
	if err != nil {
		grants.Unmap(m)
		return nil, fmt.Errorf("bind event channel %d: %w", p.port, err)
	}
	r.local = local
	if p.persistent > 0 {
		r.cache = newGrantCache(p.persistent)
	}
	r.slots = make([]slot, r.size)
	r.free = make(chan uint16, r.size)
	r.work = make(chan uint16, r.size)
	for i := range r.slots {
		s := &r.slots[i]
		s.index = uint16(i)
		s.raw = make([]byte, p.abi.EntrySize)
		s.req.Segs = make([]blkif.Segment, p.geo.maxSegments)
		r.free <- s.index
	}
	return r, nil
}

// start begins serving the ring's requests against img.
func (r *ring) start(img *image) {
	r.img = img
	r.kick = make(chan struct{}, 1)
	r.stop = make(chan struct{})
	r.runDone = make(chan error, 1)

	r.waiterWG.Add(1)
	go r.waitEvents()
	r.workersWG.Add(r.workers)
	for range r.workers {
		go r.worker(newScratch(r.geo.maxSegments, r.policy == policyGrantCopy))
	}
	go r.run()
	// Requests may already be waiting: look once without an event.
	r.poke()
}

// poke wakes run without blocking; wakeups coalesce.
func (r *ring) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// waitEvents turns the frontend's notifications into kicks. The port stays
// masked until service has drained the ring.
func (r *ring) waitEvents() {
	defer r.waiterWG.Done()
	for {
		if _, err := r.events.Wait(); err != nil {
			return
		}
		r.unmaskDue.Store(true)
		r.poke()
	}
}

// run consumes requests until the ring is stopped or fails.
func (r *ring) run() {
	defer close(r.runDone)
	for {
		select {
		case <-r.stop:
			return
		case <-r.kick:
		}
		var err error
		if perr := guard(func() { err = r.service() }); perr != nil {
			err = perr
		}
		if err != nil {
			r.runDone <- err
			r.failed(err)
			return
		}
	}
}

// service consumes at most one ring's worth of requests, then yields. When
// the ring is empty it re-arms: req_event asks for the next request's
// event, a final check closes the race with a request published meanwhile,
// and only then is the event port unmasked.
func (r *ring) service() error {
	for budget := r.size; ; {
		if r.fenced {
			if r.inflight.Load() > 0 {
				return nil // a completion will kick us
			}
			if r.held != nil {
				s := r.held
				r.held = nil
				r.dispatch(s)
				return nil
			}
			r.fenced = false
		}
		prod := r.idx.ReqProd()
		if prod-r.reqCons > r.size {
			return fmt.Errorf("%w: req_prod %d, req_cons %d, ring size %d", errBogusRing, prod, r.reqCons, r.size)
		}
		if prod == r.reqCons {
			r.idx.SetReqEvent(r.reqCons + 1)
			if r.idx.ReqProd() != r.reqCons {
				continue
			}
			if r.unmaskDue.Swap(false) {
				return r.events.Unmask(r.local)
			}
			return nil
		}
		if budget == 0 {
			r.poke() // let the workers and other rings run, then go on
			return nil
		}
		var s *slot
		select {
		case i := <-r.free:
			s = &r.slots[i]
		default:
			r.stats.ooReq.Add(1)
			return nil // every slot is in flight; a completion will kick us
		}
		budget--
		r.consume(s)
	}
}

// consume takes the next request off the ring into s: one copy of the
// slot, then parse and validate the copy. Invalid requests are answered at
// once; valid ones go to the workers, barriers once the ring is quiet.
func (r *ring) consume(s *slot) {
	i := r.reqCons & (r.size - 1)
	es := r.abi.EntrySize
	copy(s.raw, r.entries[int(i)*es:int(i+1)*es])
	r.reqCons++
	s.taken = time.Now()
	r.stats.inflight.Add(1)
	r.abi.Parse(s.raw, &s.req)
	if st := r.geo.validate(&s.req); st != blkif.StatusOK {
		r.stats.countInvalid()
		r.respond(s, st)
		return
	}
	if s.req.DataOp == blkif.OpWriteBarrier {
		r.fenced = true
		if r.inflight.Load() > 0 {
			r.held = s
			return
		}
	}
	r.dispatch(s)
}

func (r *ring) dispatch(s *slot) {
	r.inflight.Add(1)
	r.work <- s.index // never blocks: work holds every slot
}

// worker executes requests until the ring closes its work queue.
func (r *ring) worker(w *scratch) {
	defer r.workersWG.Done()
	for i := range r.work {
		s := &r.slots[i]
		var st int16
		if err := guard(func() { st = r.execute(w, s) }); err != nil {
			st = blkif.StatusError
			r.failed(err)
		}
		if r.probes != nil && s.req.NSegs > 0 {
			r.probes.Complete(uint16(r.dom), r.disk, segmentRefs(w, &s.req))
		}
		r.respond(s, st)
		r.inflight.Add(-1)
		r.poke()
	}
}

// execute performs one validated request and returns its status.
func (r *ring) execute(w *scratch, s *slot) int16 {
	req := &s.req
	if req.Indirect > 0 {
		if st := r.loadIndirect(req); st != blkif.StatusOK {
			r.stats.countInvalid()
			return st
		}
	}
	r.stats.countRequest(req)
	var err error
	switch req.DataOp {
	case blkif.OpRead, blkif.OpWrite:
		err = r.transfer(w, req, req.DataOp == blkif.OpWrite)
	case blkif.OpWriteBarrier, blkif.OpFlushDiskcache:
		if req.NSegs > 0 {
			err = r.transfer(w, req, true)
		}
		if err == nil {
			err = r.img.flush()
		}
	case blkif.OpDiscard:
		err = r.img.discard(req.Sector<<blkif.SectorShift, req.DiscardSectors<<blkif.SectorShift,
			req.DiscardFlags&blkif.DiscardSecure != 0)
	}
	if err != nil {
		r.stats.countError()
		return blkif.StatusError
	}
	return blkif.StatusOK
}

// loadIndirect copies an indirect request's segments out of its indirect
// pages, once, into the request's private copy, and validates them.
func (r *ring) loadIndirect(req *blkif.Request) int16 {
	m, err := r.grants.Map(r.dom, req.IndirectRefs[:req.Indirect], false)
	if err != nil {
		return blkif.StatusError
	}
	for i := range req.NSegs {
		blkif.ParseSegment(m.Mem[8*i:], &req.Segs[i])
	}
	if r.grants.Unmap(m) != nil {
		return blkif.StatusError
	}
	return r.geo.checkSegments(req)
}

// transfer gets the guest's pages for the request's segments, moves the
// data between them and the image, and lets the pages go.
func (r *ring) transfer(w *scratch, req *blkif.Request, write bool) error {
	if err := r.acquirePages(w, req, write); err != nil {
		return err
	}
	if r.probes != nil && r.cache != nil {
		// Persistent grants stay mapped across requests: this request's
		// own use of them is not late.
		r.probes.Begin(uint16(r.dom), segmentRefs(w, req))
	}
	err := r.move(w, req, write)
	if errors.Is(err, syscall.EFAULT) && r.img.direct.Load() && r.policy == policyDirect {
		// The kernel cannot pin these mapped grants for direct I/O (grant
		// mappings of a PV domain may not support it): the page cache
		// reaches them by copying, which is safe here because the image
		// is only open while connected.
		if r.img.dropDirect() == nil {
			err = r.move(w, req, write)
		}
	}
	return errors.Join(err, r.releasePages(w, req, write, err == nil))
}

// move does one request's vectored transfer between the image and the
// segments' pages.
func (r *ring) move(w *scratch, req *blkif.Request, write bool) error {
	for i := range req.NSegs {
		seg := req.Segs[i]
		w.iov[i].Base = &w.pages[i][int(seg.First)<<blkif.SectorShift]
		w.iov[i].SetLen(int(seg.Last-seg.First+1) << blkif.SectorShift)
	}
	return r.img.transfer(write, w.iov[:req.NSegs], int64(req.Sector<<blkif.SectorShift))
}

// segmentRefs lists a request's grants in w's scratch, for the probes:
// told just before the response that the request is done, they count a
// network buffer holding one of these pages from then on as late.
func segmentRefs(w *scratch, req *blkif.Request) []gnttab.Ref {
	w.told = w.told[:0]
	for _, seg := range req.Segs[:req.NSegs] {
		w.told = append(w.told, seg.Ref)
	}
	return w.told
}

// respond writes s's response into the next response slot, publishes it,
// notifies the frontend if it asked to be, and frees s.
func (r *ring) respond(s *slot, status int16) {
	r.rspMu.Lock()
	i := r.rspProdPvt & (r.size - 1)
	es := r.abi.EntrySize
	blkif.WriteResponse(r.entries[int(i)*es:int(i+1)*es], s.req.ID, s.req.DataOp, status)
	r.rspProdPvt++
	// RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: publish, then notify only if
	// the frontend's rsp_event lies in the range just published.
	old, now := r.rspPushed, r.rspProdPvt
	r.idx.SetRspProd(now)
	r.rspPushed = now
	notify := now-r.idx.RspEvent() < now-old
	r.rspMu.Unlock()
	r.stats.inflight.Add(-1)
	r.stats.countLatency(s.req.DataOp, time.Since(s.taken))
	r.free <- s.index
	if notify {
		r.events.Notify(r.local)
	}
}

// quiesce stops taking requests and answers every request already taken:
// the first step of a disconnect. It returns run's fatal error, if any.
func (r *ring) quiesce() error {
	close(r.stop)
	err := <-r.runDone
	if s := r.held; s != nil {
		// A barrier still waits for the requests before it: let them
		// finish, then run it too.
		for r.inflight.Load() > 0 {
			time.Sleep(time.Millisecond)
		}
		r.held = nil
		r.dispatch(s)
	}
	close(r.work)
	r.workersWG.Wait()
	return err
}

// release unmaps the ring, its persistent grants, and unbinds its event
// channel, after quiesce, and closes the ring's handles.
func (r *ring) release() error {
	var err error
	if r.cache != nil {
		err = r.cache.drop(r.grants)
	}
	err = errors.Join(err, r.grants.Unmap(r.mapping))
	err = errors.Join(err, r.grants.Close())
	err = errors.Join(err, r.events.Close()) // ends waitEvents
	r.waiterWG.Wait()
	return err
}
