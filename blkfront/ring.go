package blkfront

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"blkdom/blkif"
	"blkdom/evtchn"
	"blkdom/gnttab"
	"blkdom/xensim"
)

// fring is one of the frontend's rings: its shared pages, event channel
// and request slots.
type fring struct {
	f       *Frontend
	pages   []xensim.Page  // the ring's pages, granted to the backend
	refs    []gnttab.Ref   // their grants
	self    *xensim.Grants // maps the pages once more, contiguously, for us
	selfRef []gnttab.Ref   // the self-grants behind that view
	view    gnttab.Mapping
	events  *xensim.Events
	port    evtchn.Port
	idx     *blkif.Indexes
	entries []byte
	size    uint32
	slots   []pending
	free    chan uint16
	waiter  sync.WaitGroup

	mu         sync.Mutex // guards the request producer
	reqProdPvt uint32
	rspCons    uint32 // owned by the response goroutine
}

// pending is one request slot: its data pages, their grants while in
// flight (for good with persistent grants), an indirect page, and where
// its status goes.
type pending struct {
	pages   []xensim.Page
	refs    []gnttab.Ref
	granted int // with persistent grants: pages granted so far
	// unanswered is how many pages a request that got no response still
	// has granted (without persistent grants): close ends them.
	unanswered int
	ind        xensim.Page
	indRef     gnttab.Ref
	op         uint8 // the operation a response must name, as blkfront checks
	// waiting: pushed and not answered yet. A response for a slot not
	// waiting is stray (see Frontend.Stray).
	waiting atomic.Bool
	status  chan response
	timer   *time.Timer // bounds the wait for status; reused
}

// newRing allocates, initialises and grants one ring, binds its event
// channel, and starts taking its responses.
func newRing(f *Frontend) (*fring, error) {
	n := f.Disk.RingPages
	r := &fring{f: f}
	var err error
	if r.pages, err = f.dom.AllocPages(n); err != nil {
		return nil, err
	}
	if r.refs, err = f.grantRefs(r.pages, false); err != nil {
		return r, err
	}
	// The pages need not be adjacent in guest memory; like a guest's
	// vmap, map them for ourselves in a row through self-grants.
	if r.self, err = f.dom.OpenGrants(); err != nil {
		return r, err
	}
	for _, p := range r.pages {
		ref, err := f.dom.Grant(f.dom.ID(), p.Frame, false)
		if err != nil {
			return r, err
		}
		r.selfRef = append(r.selfRef, ref)
	}
	if r.view, err = r.self.Map(f.dom.ID(), r.selfRef, true); err != nil {
		return r, err
	}
	clear(r.view.Mem)
	r.idx = blkif.IndexesOf(r.view.Mem)
	r.idx.SetRspEvent(1) // SHARED_RING_INIT
	r.idx.SetReqEvent(1)
	r.entries = r.view.Mem[blkif.RingHeaderSize:]
	r.size = f.abi.RingEntries(n)
	if r.events, err = f.dom.OpenEvents(); err != nil {
		return r, err
	}
	if r.port, err = r.events.BindUnboundPort(f.beDom); err != nil {
		return r, err
	}
	r.slots = make([]pending, r.size)
	r.free = make(chan uint16, r.size)
	for i := range r.slots {
		p := &r.slots[i]
		p.refs = make([]gnttab.Ref, f.maxSegments())
		p.status = make(chan response, 1)
		p.timer = time.NewTimer(time.Hour)
		p.timer.Stop()
		r.free <- uint16(i)
	}
	r.waiter.Add(1)
	go r.responses()
	return r, nil
}

// close releases the ring: every grant it made must end, which fails if
// the backend still has a page mapped.
func (r *fring) close() error {
	f := r.f
	var errs []error
	if r.events != nil {
		errs = append(errs, r.events.Close())
		r.waiter.Wait()
	}
	if r.self != nil {
		errs = append(errs, r.self.Close()) // unmaps the view
	}
	for _, ref := range r.selfRef {
		errs = append(errs, f.dom.EndGrant(ref))
	}
	for _, ref := range r.refs {
		errs = append(errs, f.dom.EndGrant(ref))
	}
	for i := range r.slots {
		p := &r.slots[i]
		for _, ref := range p.refs[:p.granted] {
			errs = append(errs, f.dom.EndGrant(ref))
		}
		if p.unanswered > 0 {
			errs = append(errs, r.ungrant(p, p.unanswered))
		}
		if p.ind.Mem != nil {
			if f.Disk.Persistent {
				errs = append(errs, f.dom.EndGrant(p.indRef))
			}
			errs = append(errs, f.dom.FreePages([]xensim.Page{p.ind}))
		}
		if p.pages != nil {
			errs = append(errs, f.dom.FreePages(p.pages))
		}
	}
	if r.pages != nil {
		errs = append(errs, f.dom.FreePages(r.pages))
	}
	return errors.Join(errs...)
}

// response is what the backend answered for a slot.
type response struct {
	op     uint8
	status int16
}

// MaxTransfer is the most one request moves: its segment limit in pages.
func (f *Frontend) MaxTransfer() int { return f.Disk.MaxSegments * gnttab.PageSize }

// Do submits one request and waits for its status. For reads buf is
// filled, for writes, barriers and flushes it is the data to write (nil
// for a pure flush, whose sector is ignored). len(buf) is a multiple of 512 and at most
// MaxTransfer(); each 4 KiB of it travels in its own granted page, granted
// read-only when the backend only needs to read it (unless grants are
// persistent). More than 11 pages go in an indirect request. Do may be
// called from many goroutines at once: that is how requests pile up in
// flight, spread over the rings.
func (f *Frontend) Do(op uint8, sector uint64, buf []byte) (int16, error) {
	if len(buf)%512 != 0 || len(buf) > f.MaxTransfer() {
		return 0, fmt.Errorf("blkfront: bad transfer length %d", len(buf))
	}
	if len(buf) == 0 && (op == blkif.OpFlushDiskcache || op == blkif.OpWriteBarrier) {
		// As Linux: a flush request carries blk_rq_init's blank sector.
		sector = ^uint64(0)
	}
	r := f.rings[int(f.next.Add(1))%len(f.rings)]
	i := <-r.free
	p := &r.slots[i]
	n := (len(buf) + gnttab.PageSize - 1) / gnttab.PageSize
	if err := r.ensurePages(p, n); err != nil {
		r.free <- i
		return 0, err
	}
	readOnly := op != blkif.OpRead && !f.Disk.Persistent
	for s := range n {
		chunk := buf[s*gnttab.PageSize : min(len(buf), (s+1)*gnttab.PageSize)]
		if op != blkif.OpRead {
			copy(p.pages[s].Mem, chunk)
		}
	}
	if err := r.grant(p, n, readOnly); err != nil {
		r.free <- i
		return 0, err
	}
	p.op = op
	p.waiting.Store(true)
	last := func(s int) uint8 {
		return uint8(min(len(buf)-s*gnttab.PageSize, gnttab.PageSize)/512 - 1)
	}
	if n <= blkif.MaxDirectSegments {
		var segs [blkif.MaxDirectSegments]blkif.Segment
		for s := range n {
			segs[s] = blkif.Segment{Ref: p.refs[s], Last: last(s)}
		}
		r.push(func(slot []byte) { f.abi.PutRequest(slot, op, uint64(i), sector, segs[:n]) })
	} else {
		for s := range n {
			blkif.PutSegment(p.ind.Mem[8*s:], blkif.Segment{Ref: p.refs[s], Last: last(s)})
		}
		ind := [1]gnttab.Ref{p.indRef}
		r.push(func(slot []byte) { f.abi.PutIndirect(slot, op, uint64(i), sector, n, ind[:]) })
	}
	st, err := r.wait(p)
	if err != nil {
		p.unanswered = n
		return 0, err // the slot stays taken: its grants may still be in use
	}
	if err := r.ungrant(p, n); err != nil {
		return st, err
	}
	if op == blkif.OpRead {
		for s := range n {
			copy(buf[s*gnttab.PageSize:min(len(buf), (s+1)*gnttab.PageSize)], p.pages[s].Mem)
		}
	}
	r.free <- i
	return st, nil
}

// ensurePages gives slot p at least n data pages, and an indirect page if
// it needs one. Pages are allocated the first time a request needs them.
func (r *fring) ensurePages(p *pending, n int) error {
	f := r.f
	if len(p.pages) < n {
		more, err := f.dom.AllocPages(n - len(p.pages))
		if err != nil {
			return err
		}
		p.pages = append(p.pages, more...)
	}
	if n > blkif.MaxDirectSegments && p.ind.Mem == nil {
		pages, err := f.dom.AllocPages(1)
		if err != nil {
			return err
		}
		p.ind = pages[0]
		// Persistent, and writable as Linux blkfront grants it (the
		// backend keeps it mapped with the data pages); per request it is
		// read-only (grant).
		if f.Disk.Persistent {
			if p.indRef, err = f.dom.Grant(f.beDom, p.ind.Frame, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// grant grants the first n data pages (and the indirect page) for one
// request; with persistent grants, only pages never granted before.
func (r *fring) grant(p *pending, n int, readOnly bool) error {
	f := r.f
	from := 0
	if f.Disk.Persistent {
		from = p.granted
	}
	for s := from; s < n; s++ {
		ref, err := f.dom.Grant(f.beDom, p.pages[s].Frame, readOnly)
		if err != nil {
			r.ungrant(p, s)
			return err
		}
		p.refs[s] = ref
	}
	if f.Disk.Persistent {
		p.granted = max(p.granted, n)
	} else if n > blkif.MaxDirectSegments {
		ref, err := f.dom.Grant(f.beDom, p.ind.Frame, true)
		if err != nil {
			r.ungrant(p, n)
			return err
		}
		p.indRef = ref
	}
	return nil
}

// ungrant ends a finished request's grants, unless they are persistent.
// A grant the backend still has mapped cannot be ended: that is a
// backend leak, and an error.
func (r *fring) ungrant(p *pending, n int) error {
	f := r.f
	if f.Disk.Persistent {
		return nil
	}
	var errs []error
	for _, ref := range p.refs[:n] {
		if err := f.dom.EndGrant(ref); err != nil {
			errs = append(errs, fmt.Errorf("grant %d: %w", ref, err))
		}
	}
	if n > blkif.MaxDirectSegments {
		if err := f.dom.EndGrant(p.indRef); err != nil {
			errs = append(errs, fmt.Errorf("indirect grant %d: %w", p.indRef, err))
		}
	}
	return errors.Join(errs...)
}

// Raw lets a test write any bytes into the next request slot of the first
// ring, as a hostile frontend would; Raw then sets the request id so that
// it can wait for the response, and returns its status.
func (f *Frontend) Raw(fill func(slot []byte)) (int16, error) {
	r := f.rings[0]
	i := <-r.free
	p := &r.slots[i]
	r.push(func(slot []byte) {
		fill(slot)
		binary.LittleEndian.PutUint64(slot[f.abi.ID:], uint64(i))
		p.op = slot[0]
		if p.op == blkif.OpIndirect {
			p.op = slot[1]
		}
		p.waiting.Store(true)
	})
	st, err := r.wait(p)
	if err != nil {
		return 0, err
	}
	r.free <- i
	return st, nil
}

// Stray counts the responses that answered no request in flight: an id
// out of range, or one answered already. Linux blkfront fails the disk on
// the first (XSA-376's "response has incorrect status").
func (f *Frontend) Stray() uint64 { return f.stray.Load() }

// Indexes gives tests the first ring's header, to publish bogus indexes.
func (f *Frontend) Indexes() *blkif.Indexes { return f.rings[0].idx }

// Notify signals the backend on the first ring without publishing
// anything, for tests that scribble on the ring's indexes.
func (f *Frontend) Notify() error { return f.rings[0].events.Notify(f.rings[0].port) }

// ABI is the request layout this frontend writes.
func (f *Frontend) ABI() blkif.ABI { return f.abi }

// ErrWrongOperation is a response that names another operation than its
// request's (for an indirect request: the inner one), which Linux blkfront
// treats as a broken backend.
var ErrWrongOperation = errors.New("blkfront: response has the wrong operation")

func (r *fring) wait(p *pending) (int16, error) {
	p.timer.Reset(r.f.opts.RequestTimeout)
	defer p.timer.Stop()
	select {
	case rsp := <-p.status:
		if rsp.op != p.op {
			return rsp.status, ErrWrongOperation
		}
		return rsp.status, nil
	case <-p.timer.C:
		return 0, ErrNoResponse
	}
}

// push fills the next request slot and publishes it, notifying the
// backend only if it asked for it (RING_PUSH_REQUESTS_AND_CHECK_NOTIFY).
func (r *fring) push(fill func(slot []byte)) {
	r.mu.Lock()
	es := r.f.abi.EntrySize
	i := int(r.reqProdPvt & (r.size - 1))
	fill(r.entries[i*es : (i+1)*es])
	r.reqProdPvt++
	old, now := r.idx.ReqProd(), r.reqProdPvt
	r.idx.SetReqProd(now)
	notify := now-r.idx.ReqEvent() < now-old
	r.mu.Unlock()
	if notify {
		r.events.Notify(r.port)
	}
}

// responses takes responses off the ring and hands each status to its
// slot, until the event channel closes.
func (r *fring) responses() {
	defer r.waiter.Done()
	es := r.f.abi.EntrySize
	for {
		if _, err := r.events.Wait(); err != nil {
			return
		}
		for {
			for prod := r.idx.RspProd(); r.rspCons != prod; r.rspCons++ {
				i := int(r.rspCons & (r.size - 1))
				id, op, st := blkif.ParseResponse(r.entries[i*es : (i+1)*es])
				if id >= uint64(len(r.slots)) || !r.slots[id].waiting.CompareAndSwap(true, false) {
					r.f.stray.Add(1)
					continue
				}
				select {
				case r.slots[id].status <- response{op, st}:
				default:
				}
			}
			r.idx.SetRspEvent(r.rspCons + 1)
			if r.idx.RspProd() == r.rspCons {
				break
			}
		}
		r.events.Unmask(r.port)
	}
}
