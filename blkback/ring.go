package blkback

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"blkdom/blkif"
	"blkdom/evtchn"
	"blkdom/gnttab"
)

// This file is the data path: a request's way from its ring slot to the
// disk and back, top to bottom. One goroutine, the ring's loop, does all
// of it; the I/O engine (engine.go) only moves data, and the event waiter
// only turns the frontend's notifications into wakeups of the loop.
//
//	loop       takes what there is, waits only when nothing is left:
//	           requests on the ring, completions from the engine
//	consume    copies one slot out ONCE (XSA-155), parses, validates
//	begin      loads indirect segments, gets the guest's pages (pages.go),
//	           queues the request's I/O on the engine
//	complete   continues a short transfer, or flushes after a write that
//	           asked for it, then lets the pages go
//	finish     writes the response field by field (XSA-216)
//	push       publishes every response written since the last push and
//	           notifies the frontend once, if it asked to be
//
// After a batch the loop polls the ring for a while (PollTime) before it
// re-arms the event channel: a frontend that keeps sending then needs no
// notification, and the backend no wakeup. Events that find no work back
// off as Linux's late EOI does (XSA-332).
//
// Barriers fence the ring: nothing after a WRITE_BARRIER starts before
// everything before it finished, and the barrier itself is durable before
// its response.

// ringParams is what a connection negotiated for one ring.
type ringParams struct {
	dom    uint32       // the frontend's domain
	disk   uint32       // the disk's id for the probes
	probes Probes       // or nil
	abi    blkif.ABI    // its request layout
	refs   []gnttab.Ref // the ring's pages
	port   evtchn.Port  // the frontend's event channel port
	geo    *geometry    // the disk, shared by the connection's rings
	stats  *deviceStats // the device's counters
	policy cachePolicy  // how data reaches the guest's pages
	// engine is the I/O engine (EngineUring or EngineWorkers); workers the
	// goroutines of the workers engine, and the most requests grant copy
	// keeps in flight (each holds a request's worth of bounce pages).
	engine  string
	workers int
	// pollTime bounds how long the loop polls an empty ring before it
	// re-arms the event channel; 0 never polls.
	pollTime time.Duration
	// persistent is the size of the persistent-grant cache, 0 when
	// persistent grants were not negotiated.
	persistent int
	// failed is called once, from the ring's goroutine, when the frontend
	// broke the ring protocol; the device then disconnects.
	failed func(error)
	// log is the device's rate-limited logger: a request that fails on the
	// store is answered with an error and said there (the guest's kernel
	// logs an I/O error; the operator should see why).
	log *slog.Logger
	// ledger is the file of the ring's ledger ("" keeps it in memory);
	// with adopt, the ring is a predecessor's and goes on where its
	// ledger says (see ledger).
	ledger string
	adopt  bool
}

// stage is what a slot's operation in flight is doing.
type stage uint8

const (
	stageData stage = iota // moving the request's data
	stageSync              // the flush of a flush, barrier or write-then-flush
)

// slot is a request taken off the ring and not yet answered.
type slot struct {
	index uint16
	raw   []byte // the private copy of the ring slot
	req   blkif.Request
	taken time.Time // when it came off the ring
	w     *scratch  // its pages and iovecs, made on the slot's first use
	stage stage
	iov   []unix.Iovec // what is left to transfer, from off on
	off   int64
	paged bool // its pages are held (released when its data moved)
	// busy: begun and not finished; queued: an operation of its is with
	// the engine. After a failed loop, drain goes by them.
	busy, queued bool
	// retried: a direct transfer refused with EFAULT went again through
	// the page cache.
	retried bool
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
	cache   *grantCache
	io      engine
	ledger  *ledger
	// redo lists the slots a predecessor took and did not answer, for
	// the loop to serve first (resume); resumed is how many there were,
	// kept whether a predecessor's ledger was found, and waiting how many
	// requests the frontend had published and nobody had taken.
	redo    []uint16
	resumed int
	kept    bool
	waiting uint32

	// Owned by the loop.
	reqCons    uint32 // next request to consume
	rspProdPvt uint32 // next response slot
	rspPushed  uint32 // the rsp_prod last published
	slots      []slot
	free       []uint16 // slots not in flight, used last-in first-out
	// answered holds the slots answered since the last push: each is
	// free again only once push has published its response, because
	// its ledger entry is what tells a successor that the answer is
	// still unseen (see ledger).
	answered []uint16
	inflight int // slots begun and not finished
	// fenced stops consumption while a barrier waits for the requests
	// before it, and while the barrier itself runs. held is the barrier
	// waiting to start, or nil.
	fenced bool
	held   *slot
	// spurious counts events in a row that found no work; maskedUntil is
	// when the event channel may be unmasked again after them; eventWorked
	// says requests came since the last unmask.
	spurious    int
	eventWorked bool
	maskedUntil time.Time
	backoff     *time.Timer
	pollBudget  time.Duration // the next poll's length, adapted to its hits
	lookCost    time.Duration // what one look at the ring costs (measureLook)
	clock       time.Time     // this pass's time (now), zero until read
	yielded     time.Time     // when the loop last yielded (loop)

	unmaskDue atomic.Bool // an event arrived and its port is masked
	stopping  atomic.Bool // quiesce asked the loop to finish
	killed    atomic.Bool // abandon asked the loop to stop where it stands
	runDone   chan error  // the loop's fatal error, or nil; closed when it returns
	waiterWG  sync.WaitGroup
}

// newRing maps the ring and binds its event channel; start then serves it.
// The ring owns grants and events from then on; on error nothing stays
// mapped or bound and the caller still owns them.
func newRing(p ringParams, grants Grants, events Events) (*ring, error) {
	r := &ring{ringParams: p, grants: grants, events: events}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	m, err := grants.Map(p.dom, p.refs, true)
	if err != nil {
		return nil, fmt.Errorf("map ring: %w", err)
	}
	r.mapping = m
	r.idx = blkif.IndexesOf(m.Mem)
	r.entries = m.Mem[blkif.RingHeaderSize:]
	r.size = p.abi.RingEntries(len(p.refs))
	id := identity{port: p.port, refs: p.refs, entrySize: p.abi.EntrySize, slots: r.size}
	l, kept, err := openLedger(p.ledger, id, p.adopt)
	if err != nil {
		grants.Unmap(m)
		return nil, fmt.Errorf("ledger: %w", err)
	}
	local, err := events.BindInterdomain(p.dom, p.port)
	if err != nil {
		l.close()
		grants.Unmap(m)
		return nil, fmt.Errorf("bind event channel %d: %w", p.port, err)
	}
	r.local = local
	r.ledger = l
	// As Linux's BACK_RING_ATTACH: a ring goes on from the responses its
	// frontend has seen, 0 on a fresh ring.
	r.reqCons = r.idx.RspProd()
	r.rspProdPvt, r.rspPushed = r.reqCons, r.reqCons
	if kept {
		r.reqCons, r.redo = l.resume(r.rspProdPvt, r.size)
		r.resumed, r.kept = len(r.redo), true
	}
	if p.adopt {
		r.waiting = r.idx.ReqProd() - r.reqCons
	}
	if p.persistent > 0 {
		r.cache = newGrantCache(p.persistent, p.geo.maxSegments, &p.stats.grantMaps)
	}
	r.slots = make([]slot, r.size)
	for i := range r.slots {
		s := &r.slots[i]
		s.index = uint16(i)
		s.raw = l.raw(uint16(i), p.abi.EntrySize)
		s.req.Segs = make([]blkif.Segment, p.geo.maxSegments)
	}
	return r, nil
}

// start begins serving the ring's requests against img, and returns why
// it uses another engine than asked for, if it does. Grant copy keeps at
// most workers requests in flight: each holds its own bounce pages.
func (r *ring) start(img *image) (fallback error) {
	r.img = img
	r.io, fallback = newEngine(r.engine, r.size, r.workers, r.complete)
	n := len(r.slots)
	if r.policy == policyGrantCopy {
		n = min(n, max(r.workers, 1))
	}
	r.free = make([]uint16, 0, n)
	r.answered = make([]uint16, 0, n)
	for i := n - 1; i >= 0; i-- {
		r.free = append(r.free, uint16(i))
	}
	r.pollBudget = r.pollTime
	r.measureLook()
	r.backoff = time.NewTimer(time.Hour)
	r.backoff.Stop()
	r.runDone = make(chan error, 1)
	if pe, ok := r.events.(PollEvents); !ok || !r.io.watch(pe.Fd(), func() { r.takeEvents(pe) }) {
		r.waiterWG.Add(1)
		go r.waitEvents()
	}
	go r.run()
	return fallback
}

// takeEvents takes the fired port off a polled event channel handle, from
// the loop: the engine saw its descriptor readable. The handle has this
// ring's port alone, which stays masked until the loop has drained the
// ring (rearm): one read takes everything, and a second would be a system
// call that finds nothing.
func (r *ring) takeEvents(pe PollEvents) {
	if _, ok, err := pe.TryWait(); ok && err == nil {
		r.unmaskDue.Store(true)
	}
}

// waitEvents turns the frontend's notifications into wakeups of the loop
// where the engine cannot poll the event channel itself (the workers
// engine, or a handle without a descriptor). The port stays masked until
// the loop has drained the ring.
func (r *ring) waitEvents() {
	defer r.waiterWG.Done()
	for {
		if _, err := r.events.Wait(); err != nil {
			return
		}
		r.unmaskDue.Store(true)
		r.io.kick()
	}
}

// run is the ring's goroutine: the loop, with a panic or a broken ring
// protocol turned into the device's disconnect.
func (r *ring) run() {
	defer close(r.runDone)
	var err error
	if perr := guard(func() { err = r.loop() }); perr != nil {
		err = perr
	}
	if err != nil {
		r.runDone <- err
		r.failed(err)
		// Nothing is taken off the ring any more; what is in flight is
		// answered when the device disconnects (quiesce).
	}
}

// loop serves the ring until quiesce, and returns with nothing in flight.
func (r *ring) loop() error {
	r.resume()
	for {
		r.clock = time.Time{}
		stopping := r.stopping.Load()
		if stopping && (r.inflight == 0 && r.held == nil || r.killed.Load()) {
			return nil
		}
		// Completions first: they free slots, and an event's completion
		// re-queues its poll, which then goes to the kernel in the same
		// io_uring_enter as the I/O of the requests it brought.
		completed := r.reap()
		if err := r.consume(!stopping); err != nil {
			return err
		}
		r.push()
		// What was queued goes now, before any poll (no system call when
		// nothing was).
		if err := r.io.submit(false); err != nil {
			return err
		}
		if completed > 0 || r.more() {
			r.yield()
			continue
		}
		if stopping {
			if err := r.io.submit(r.inflight > 0); err != nil {
				return err
			}
			continue
		}
		// Nothing to do now: poll for a while, then sleep.
		if r.poll() {
			continue
		}
		if err := r.rearm(); err != nil {
			return err
		}
		if r.more() {
			continue
		}
		if err := r.io.submit(true); err != nil {
			return err
		}
	}
}

// yield lets the Go scheduler run, at most once a millisecond of a busy
// loop, and only in a pass that read the clock anyway. The loop never
// blocks in the scheduler (it waits in io_uring_enter), so without it
// the runtime sees one goroutine on one scheduling tick for good: every
// 10 ms its sysmon thread preempts it with a signal or takes its
// processor from the system call it waits in, and each such take sets
// sysmon back to waking every 20 µs. A yield starts a new tick. In the
// driver domain at QD1 it lowered blkdom's CPU per request from 2.11-2.32
// ms to 1.69-1.75 (bench/NOTES.md, 29 Nov); the other jobs did not change
// beyond their spread.
func (r *ring) yield() {
	if !r.clock.IsZero() && r.clock.Sub(r.yielded) > time.Millisecond {
		r.yielded = r.clock
		runtime.Gosched()
	}
}

// now is the time of the loop's current pass, read once however many
// requests the pass takes or answers: requests' latencies have the pass's
// resolution. Reading the clock is a system call where the vDSO cannot
// read it (BenchmarkClock), as in a Xen PV domain whose TSC Xen does not
// call stable.
func (r *ring) now() time.Time {
	if r.clock.IsZero() {
		r.clock = time.Now()
	}
	return r.clock
}

// more says whether the ring has requests the loop could take now.
func (r *ring) more() bool {
	if r.fenced {
		return r.inflight == 0 // the barrier, or what follows it, can start
	}
	return r.idx.ReqProd() != r.reqCons && len(r.free) > 0
}

// consume takes at most one ring's worth of requests (XSA-332: bounded work
// per pass), answers invalid ones at once and begins the others; with take
// false (stopping) it only starts a held barrier once the ring is quiet.
func (r *ring) consume(take bool) error {
	for budget := r.size; budget > 0; budget-- {
		if r.fenced {
			if r.inflight > 0 {
				return nil // a completion will go on
			}
			if s := r.held; s != nil {
				r.held = nil
				r.begin(s)
				return nil
			}
			r.fenced = false
		}
		if !take {
			return nil
		}
		prod := r.idx.ReqProd()
		// Linux's RING_REQUEST_PROD_OVERFLOW: requests beyond the
		// responses not yet written would overwrite slots the backend
		// still has to answer in.
		if prod-r.rspProdPvt > r.size {
			return fmt.Errorf("%w: req_prod %d, rsp_prod %d, ring size %d", errBogusRing, prod, r.rspProdPvt, r.size)
		}
		if prod == r.reqCons {
			return nil
		}
		if len(r.free) == 0 {
			if len(r.answered) == 0 {
				r.stats.ooReq.Add(1)
			}
			// Every slot is in flight, or answered and free once push
			// has published the answers: a completion or the next pass
			// goes on.
			return nil
		}
		s := &r.slots[r.free[len(r.free)-1]]
		r.free = r.free[:len(r.free)-1]
		r.take(s)
	}
	return nil
}

// take copies the next request off the ring into s (its ledger entry),
// once, and accepts it.
func (r *ring) take(s *slot) {
	i := r.reqCons & (r.size - 1)
	es := r.abi.EntrySize
	copy(s.raw, r.entries[int(i)*es:int(i+1)*es])
	r.ledger.took(s.index, r.reqCons)
	r.reqCons++
	r.eventWorked = true
	r.accept(s)
}

// resume serves again, in ring order, the requests a predecessor took
// and did not answer (see ledger).
func (r *ring) resume() {
	for _, i := range r.redo {
		if k := slices.Index(r.free, i); k >= 0 {
			r.free = slices.Delete(r.free, k, k+1)
		}
		r.accept(&r.slots[i])
	}
	r.redo = nil
}

// accept parses and validates a request copied into s. Invalid requests
// are answered at once; valid ones begin, barriers once the ring is
// quiet.
func (r *ring) accept(s *slot) {
	s.taken = r.now()
	r.stats.inflight.Add(1)
	r.abi.Parse(s.raw, &s.req)
	if st := r.geo.validate(&s.req); st != blkif.StatusOK {
		r.stats.countInvalid()
		r.respond(s, st)
		return
	}
	if s.req.DataOp == blkif.OpWriteBarrier {
		r.fenced = true
		if r.inflight > 0 {
			r.held = s
			return
		}
	}
	r.begin(s)
}

// begin starts a validated request: its I/O goes to the engine, or it is
// answered at once when it needs none or cannot start.
func (r *ring) begin(s *slot) {
	r.inflight++
	s.busy = true
	if s.w == nil {
		s.w = newScratch(r.geo.maxSegments, r.policy == policyGrantCopy)
	}
	req := &s.req
	s.paged, s.retried = false, false
	if req.Indirect > 0 {
		if st := r.loadIndirect(s.w, req); st != blkif.StatusOK {
			r.stats.countInvalid()
			r.finish(s, st)
			return
		}
	}
	r.stats.countRequest(req)
	switch req.DataOp {
	case blkif.OpRead, blkif.OpWrite:
		r.beginTransfer(s, req.DataOp == blkif.OpWrite)
	case blkif.OpWriteBarrier, blkif.OpFlushDiskcache:
		if req.NSegs > 0 {
			r.beginTransfer(s, true)
		} else {
			r.beginSync(s)
		}
	case blkif.OpDiscard:
		err := r.img.discard(req.Sector<<blkif.SectorShift, req.DiscardSectors<<blkif.SectorShift,
			req.DiscardFlags&blkif.DiscardSecure != 0)
		if st := discardStatus(err); st != blkif.StatusError {
			r.finish(s, st)
			return
		}
		r.finishErr(s, err)
	}
}

// discardStatus is the answer to a discard that ended with err: as Linux
// blkback answers, EOPNOTSUPP when the store cannot discard (a file on
// NFSv3 cannot punch holes), so that the frontend stops sending discards
// instead of failing them as I/O errors.
func discardStatus(err error) int16 {
	switch {
	case err == nil:
		return blkif.StatusOK
	case errors.Is(err, syscall.EOPNOTSUPP):
		return blkif.StatusNotSupported
	}
	return blkif.StatusError
}

// beginTransfer gets the guest's pages for the request's segments and
// queues the transfer between them and the image.
func (r *ring) beginTransfer(s *slot, write bool) {
	w, req := s.w, &s.req
	if err := r.acquirePages(w, req, write); err != nil {
		r.finishErr(s, err)
		return
	}
	s.paged = true
	if r.probes != nil && r.cache != nil {
		// Persistent grants stay mapped across requests: this request's
		// own use of them is not late.
		r.probes.Begin(uint16(r.dom), segmentRefs(w, req))
	}
	iov := r.iovecs(w, req)
	r.stats.dataIovecs.Add(uint64(len(iov)))
	s.stage, s.iov, s.off = stageData, iov, int64(req.Sector<<blkif.SectorShift)
	r.queueData(s)
}

func (r *ring) queueData(s *slot) {
	s.queued = true
	if s.req.DataOp == blkif.OpRead {
		r.io.readv(r.img.fd, s.iov, s.off, s.index)
	} else {
		r.io.writev(r.img.fd, s.iov, s.off, s.index)
	}
}

// beginSync queues the flush of a flush or barrier request.
func (r *ring) beginSync(s *slot) {
	if r.img.readOnly {
		r.finish(s, blkif.StatusOK)
		return
	}
	s.stage = stageSync
	s.queued = true
	r.io.fdatasync(r.img.fd, s.index)
}

// reap handles every completion the engine has and says how many.
func (r *ring) reap() int { return r.io.reap() }

// complete goes on with slot i after its operation returned res (a byte
// count or a negated errno).
func (r *ring) complete(i uint16, res int32) {
	s := &r.slots[i]
	s.queued = false
	if s.stage == stageSync {
		r.finishErr(s, r.img.flushed(errnoOf(res)))
		return
	}
	if res < 0 {
		err := errnoOf(res)
		if err == syscall.EFAULT && !s.retried && r.policy == policyDirect && r.img.direct.Load() {
			// The kernel cannot pin these mapped grants for direct I/O
			// (grant mappings of a PV domain may not support it): the
			// page cache reaches them by copying, which is safe here
			// because the image is only open while connected.
			if r.img.dropDirect() == nil {
				r.log.Warn("direct I/O into the guest's pages refused (EFAULT): the image is served through the page cache from now on",
					"op", LatencyOps[latencyOp(s.req.DataOp)], "segments", s.req.NSegs)
				s.retried = true
				r.queueData(s)
				return
			}
		}
		r.endTransfer(s, err)
		return
	}
	if res == 0 {
		r.endTransfer(s, errShortTransfer)
		return
	}
	// A short transfer goes on where it stopped.
	s.off += int64(res)
	s.iov = advanceIovecs(s.iov, int(res))
	if len(s.iov) > 0 {
		r.queueData(s)
		return
	}
	r.endTransfer(s, nil)
}

// errShortTransfer reports a transfer that moved nothing: past the end of
// the image.
var errShortTransfer = errors.New("transfer ended early")

// endTransfer lets a transfer's pages go and finishes the request, or
// flushes first for a write that asked for it.
func (r *ring) endTransfer(s *slot, err error) {
	write := s.req.DataOp != blkif.OpRead
	err = errors.Join(err, r.releasePages(s.w, &s.req, write, err == nil))
	if err == nil && (s.req.DataOp == blkif.OpWriteBarrier || s.req.DataOp == blkif.OpFlushDiskcache) {
		r.beginSync(s)
		return
	}
	r.finishErr(s, err)
}

func (r *ring) finishErr(s *slot, err error) {
	if err != nil {
		r.stats.countError()
		r.log.Warn("request failed: answered with an error", "op", LatencyOps[latencyOp(s.req.DataOp)],
			"sector", s.req.Sector, "segments", s.req.NSegs, "err", err)
		r.finish(s, blkif.StatusError)
		return
	}
	r.finish(s, blkif.StatusOK)
}

// finish answers a begun request and frees its slot.
func (r *ring) finish(s *slot, status int16) {
	if r.probes != nil && s.paged {
		r.probes.Complete(uint16(r.dom), r.disk, segmentRefs(s.w, &s.req))
	}
	s.paged, s.busy = false, false
	r.inflight--
	r.respond(s, status)
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

// respond writes s's response into the next response slot; push
// publishes it and frees s.
func (r *ring) respond(s *slot, status int16) {
	i := r.rspProdPvt & (r.size - 1)
	es := r.abi.EntrySize
	r.ledger.answering(s.index, r.rspProdPvt)
	blkif.WriteResponse(r.entries[int(i)*es:int(i+1)*es], s.req.ID, s.req.DataOp, status)
	r.rspProdPvt++
	r.stats.inflight.Add(-1)
	r.stats.countLatency(s.req.DataOp, r.now().Sub(s.taken))
	r.answered = append(r.answered, s.index)
}

// push publishes the responses written since the last push, frees their
// slots, and notifies the frontend if its rsp_event lies in the range just
// published (RING_PUSH_RESPONSES_AND_CHECK_NOTIFY): one notification a
// batch.
func (r *ring) push() {
	old, now := r.rspPushed, r.rspProdPvt
	if old == now {
		return
	}
	r.idx.SetRspProd(now)
	r.rspPushed = now
	r.free = append(r.free, r.answered...)
	r.answered = r.answered[:0]
	if now-r.idx.RspEvent() < now-old {
		r.stats.notifies.Add(1)
		r.events.Notify(r.local)
	}
}

// poll watches the empty ring for up to the poll budget and says whether
// work came. It reads no clock: where the vDSO cannot read it (a Xen PV
// domain, BenchmarkClock) every read is a system call that costs more than
// the poll saves, so the budget is counted in looks at the ring, each
// costing lookCost (measured when the ring starts). It never yields: a
// yield is a trip through the scheduler, which in a PV domain costs more
// than the whole poll (futex wake-ups of other threads, BenchmarkRequest's
// cpu-ns/op), and the budget (PollTime, 50 µs by default) already bounds
// what the other goroutines wait. The budget adapts: a poll that found work
// restores it, one that found none halves it, so a quiet frontend soon
// costs nothing; an event that brought work doubles it again (rearm).
func (r *ring) poll() bool {
	if r.pollBudget < time.Microsecond {
		return false
	}
	looks := max(int(r.pollBudget/r.lookCost), 1)
	for i := 1; i <= looks; i++ {
		if r.more() || r.io.ready() || r.stopping.Load() {
			r.stats.pollHits.Add(1)
			r.stats.pollNs.Add(uint64(i) * uint64(r.lookCost))
			r.pollBudget = r.pollTime
			return true
		}
	}
	r.stats.pollNs.Add(uint64(looks) * uint64(r.lookCost))
	r.pollBudget /= 2
	return false
}

// measureLook sets lookCost, what one look of poll at the empty ring
// costs here, from a run of looks between two clock reads.
func (r *ring) measureLook() {
	const n = 4096
	t0 := time.Now()
	for range n {
		// Atomic loads and an interface call: not optimised away.
		_ = r.more() || r.io.ready() || r.stopping.Load()
	}
	r.lookCost = max(time.Since(t0)/n, time.Nanosecond)
}

// rearm asks the frontend for an event at its next request
// (RING_FINAL_CHECK_FOR_REQUESTS), and unmasks the event channel if an
// event was delivered: at once, or after a back-off when events keep
// coming with no work (XSA-332, as Linux's late EOI). It waits out the
// back-off itself only when nothing is in flight.
func (r *ring) rearm() error {
	r.idx.SetReqEvent(r.reqCons + 1)
	if r.more() {
		return nil // the final check: a request came meanwhile
	}
	if !r.unmaskDue.Load() {
		return nil
	}
	if r.eventWorked {
		r.spurious, r.maskedUntil = 0, time.Time{}
		// The frontend had to notify: polling might have spared it. A
		// ring whose polls all missed polls again, a little longer at
		// each such event, up to the poll time.
		r.pollBudget = min(max(2*r.pollBudget, time.Microsecond), r.pollTime)
	} else {
		// An event woke the loop and it found nothing: spurious.
		r.spurious++
		r.stats.spurious.Add(1)
	}
	if r.spurious >= 2 && r.maskedUntil.IsZero() {
		r.maskedUntil = time.Now().Add(min(time.Millisecond<<(r.spurious-2), maxBackoff))
	}
	if !r.maskedUntil.IsZero() {
		wait := time.Until(r.maskedUntil)
		if wait > 0 && r.inflight > 0 {
			return nil // stays masked; a completion comes back here
		}
		if wait > 0 {
			r.backoff.Reset(wait)
			<-r.backoff.C
		}
		r.maskedUntil = time.Time{}
	}
	r.unmaskDue.Store(false)
	r.eventWorked = false
	return r.events.Unmask(r.local)
}

// maxBackoff bounds how long events that keep finding no work keep the
// event channel masked.
const maxBackoff = time.Second

// quiesce stops taking requests and answers every request already taken:
// the first step of a disconnect. It returns the loop's fatal error, if
// any.
func (r *ring) quiesce() error {
	if r.io == nil {
		return nil // never started
	}
	r.stopping.Store(true)
	r.io.kick()
	err := <-r.runDone
	if err != nil {
		// The loop gave up on a broken ring: finish what it had begun here.
		r.drain()
	}
	return err
}

// drain answers what a loop that failed left in flight: it lets the
// engine's operations complete (a held barrier still runs after them),
// then answers every request begun and not finished, such as the one the
// loop failed in, with an error.
func (r *ring) drain() {
	guard(func() {
		for {
			queued := false
			for i := range r.slots {
				queued = queued || r.slots[i].queued
			}
			if queued {
				if r.reap() == 0 && r.io.submit(true) != nil {
					return
				}
				continue
			}
			for i := range r.slots {
				if s := &r.slots[i]; s.busy {
					r.finish(s, blkif.StatusError)
				}
			}
			if r.held == nil {
				break
			}
			s := r.held
			r.held = nil
			r.begin(s)
		}
		r.push()
	})
}

// abandon stops the loop where it stands, with requests in flight and
// responses unpublished, and closes the ring's handles, keeping its
// ledger: what SIGKILL does to the process (ErrAbandon). It says how many
// requests it left unanswered.
func (r *ring) abandon() (int, error) {
	if r.io != nil {
		r.killed.Store(true)
		r.stopping.Store(true)
		r.io.kick()
		<-r.runDone
	}
	r.ledger.keep = true
	return r.inflight, r.release()
}

// release unmaps the ring, its persistent grants, and unbinds its event
// channel, after quiesce, and closes the ring's handles.
func (r *ring) release() error {
	// The event waiter kicks the engine: it ends before the engine does,
	// so that no kick writes to a closed (or reused) descriptor.
	err := r.events.Close() // ends waitEvents
	r.waiterWG.Wait()
	if r.io != nil {
		err = errors.Join(err, r.io.close())
	}
	if r.cache != nil {
		err = errors.Join(err, r.cache.drop(r.grants))
	}
	err = errors.Join(err, r.grants.Unmap(r.mapping))
	err = errors.Join(err, r.grants.Close())
	return errors.Join(err, r.ledger.close())
}
