package blkback

import (
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"blkdom/blkif"
	"blkdom/evtchn"
)

// testRing is a ring over plain memory, for the loop's decisions that
// need no grants, image or engine.
func testRing(t *testing.T, events Events) *ring {
	t.Helper()
	mem := make([]byte, 4096)
	r := &ring{ringParams: ringParams{abi: blkif.X86_64, stats: &deviceStats{}}, events: events,
		idx: blkif.IndexesOf(mem), entries: mem[blkif.RingHeaderSize:]}
	r.size = r.abi.RingEntries(1)
	r.slots = make([]slot, r.size)
	r.free = make([]uint16, 0, r.size)
	for i := range r.slots {
		r.free = append(r.free, uint16(i))
	}
	r.backoff = time.NewTimer(time.Hour)
	r.backoff.Stop()
	return r
}

// A frontend that publishes requests into slots whose requests the backend
// has not answered yet breaks the ring (Linux's RING_REQUEST_PROD_OVERFLOW):
// counting from the requests consumed instead would let it through and
// make the backend parse its own pending slots as requests.
func TestOvercommittedRingIsBogus(t *testing.T) {
	for _, c := range []struct {
		name                  string
		reqCons, rspPvt, prod uint32
		bogus                 bool
	}{
		{"32 in flight, 32 more published", 32, 0, 64, true},
		{"32 in flight, 1 more published", 32, 0, 33, true},
		{"all answered, a full ring published", 32, 32, 64, false},
		{"half answered, half a ring more", 32, 16, 48, false},
		{"wrapped indexes, one too many", 1<<32 - 8, 1<<32 - 40, 1<<32 - 7, true},
		{"wrapped indexes, full", 1<<32 - 8, 1<<32 - 8, 24, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := testRing(t, nil)
			r.reqCons, r.rspProdPvt, r.rspPushed = c.reqCons, c.rspPvt, c.rspPvt
			r.free = r.free[:0] // every slot busy: a legal ring takes nothing now
			r.idx.SetReqProd(c.prod)
			err := r.consume(true)
			if got := errors.Is(err, errBogusRing); got != c.bogus {
				t.Fatalf("req_prod %d, req_cons %d, rsp_prod_pvt %d: bogus %v (%v), want %v",
					c.prod, c.reqCons, c.rspPvt, got, err, c.bogus)
			}
		})
	}
}

// unmaskLog is an Events that records when the ring unmasks its port.
type unmaskLog struct {
	Events
	at []time.Time
}

func (u *unmaskLog) Unmask(evtchn.Port) error {
	u.at = append(u.at, time.Now())
	return nil
}

// Events that keep finding no work keep the port masked longer and longer
// (XSA-332, as Linux's late EOI): the first two unmask at once, then the
// wait doubles from 1 ms up to a second; an event that finds work ends the
// back-off.
func TestSpuriousEventsBackOff(t *testing.T) {
	u := &unmaskLog{}
	r := testRing(t, u)
	spurious := func() time.Duration {
		r.unmaskDue.Store(true)
		t0 := time.Now()
		if err := r.rearm(); err != nil {
			t.Fatal(err)
		}
		if r.unmaskDue.Load() {
			t.Fatal("rearm left an event's port masked with nothing in flight")
		}
		return u.at[len(u.at)-1].Sub(t0)
	}
	var waits []time.Duration
	for range 6 {
		waits = append(waits, spurious())
	}
	for i, w := range waits[:1] {
		if w > 500*time.Microsecond {
			t.Errorf("spurious event %d: unmasked after %v, want at once", i+1, w)
		}
	}
	for i, w := range waits[1:] {
		if want := time.Millisecond << i; w < want {
			t.Errorf("spurious event %d: unmasked after %v, want at least %v", i+2, w, want)
		}
	}
	if got := r.stats.spurious.Load(); got != 6 {
		t.Errorf("%d spurious events counted, want 6", got)
	}
	// An event that finds a request is not spurious and ends the back-off.
	r.unmaskDue.Store(true)
	r.eventWorked = true
	r.rearm()
	if w := spurious(); w > 500*time.Microsecond {
		t.Errorf("after an event with work, a spurious one waited %v", w)
	}
	// With requests in flight the port stays masked instead of the loop
	// sleeping: a completion comes back to rearm.
	spurious()
	r.inflight = 1
	r.unmaskDue.Store(true)
	n := len(u.at)
	r.rearm()
	if len(u.at) != n || !r.unmaskDue.Load() {
		t.Error("a spurious event with requests in flight unmasked at once")
	}
}

// A store that cannot discard answers EOPNOTSUPP, as Linux blkback does:
// blkfront then turns discard off instead of reporting an I/O error.
func TestDiscardStatus(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int16
	}{
		{nil, blkif.StatusOK},
		{syscall.EOPNOTSUPP, blkif.StatusNotSupported},
		{fmt.Errorf("fallocate: %w", syscall.EOPNOTSUPP), blkif.StatusNotSupported},
		{syscall.EIO, blkif.StatusError},
		{syscall.ENOSPC, blkif.StatusError},
	} {
		if got := discardStatus(c.err); got != c.want {
			t.Errorf("discardStatus(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

// The poll budget halves with every poll that finds nothing, and an
// event that brought requests doubles it again, up to the poll time: a
// ring whose polls all missed does not stop polling for good.
func TestPollBudgetAdapts(t *testing.T) {
	r := testRing(t, &unmaskLog{})
	r.pollTime, r.pollBudget = 64*time.Microsecond, 64*time.Microsecond
	r.io = newWorkersEngine(r.size, 1, func(uint16, int32) {})
	defer r.io.close()
	r.measureLook()
	if r.lookCost <= 0 || r.lookCost > time.Millisecond {
		t.Fatalf("one look at an empty ring costs %v", r.lookCost)
	}
	for range 10 {
		if r.poll() {
			t.Fatal("a poll of an empty ring found work")
		}
	}
	if r.pollBudget >= time.Microsecond {
		t.Fatalf("after 10 misses the budget is %v", r.pollBudget)
	}
	for range 10 {
		r.unmaskDue.Store(true)
		r.eventWorked = true
		r.rearm()
	}
	if r.pollBudget != r.pollTime {
		t.Fatalf("after 10 events with work the budget is %v, want %v", r.pollBudget, r.pollTime)
	}
}

// BenchmarkClock is what one read of the clock costs: nanoseconds in the
// vDSO on most machines, a system call where the vDSO cannot read the
// clock (a Xen PV domain without a stable TSC, measured with
// scripts/vmtest.sh blkback -test.run X -test.bench Clock). The ring's loop
// reads it once per pass, not per request (ring.now).
func BenchmarkClock(b *testing.B) {
	var t time.Time
	for b.Loop() {
		t = time.Now()
	}
	_ = t
}

// BenchmarkSyscall is what the cheapest system call (getppid) costs, raw
// and through the Go runtime's entersyscall/exitsyscall: in a 64-bit Xen
// PV domain each one switches page tables through Xen, which QEMU's TCG
// pays with a TLB flush (scripts/vmtest.sh blkback -test.run X
// -test.bench Syscall). The ring's loop makes several per wake-up.
func BenchmarkSyscall(b *testing.B) {
	b.Run("raw", func(b *testing.B) {
		for b.Loop() {
			unix.RawSyscall(unix.SYS_GETPPID, 0, 0, 0)
		}
	})
	b.Run("runtime", func(b *testing.B) {
		for b.Loop() {
			unix.Syscall(unix.SYS_GETPPID, 0, 0, 0)
		}
	})
}

// A slot is taken again only after the response it held is published: a
// successor serves again every request whose answer its frontend cannot
// see, and it finds them by their ledger entries. Reusing the slot of a
// request answered in this pass (an invalid one, answered at once) for
// the next request would overwrite the entry that says its answer is
// unpublished, and a kill before push would leave that request
// unanswered for good (the guest's I/O hangs).
func TestSlotsReusedOnlyAfterPush(t *testing.T) {
	r := testRing(t, nil)
	l, _, err := openLedger("", identity{entrySize: r.abi.EntrySize, slots: r.size}, false)
	if err != nil {
		t.Fatal(err)
	}
	r.ledger = l
	for i := range r.slots {
		r.slots[i].index = uint16(i)
		r.slots[i].raw = l.raw(uint16(i), r.abi.EntrySize)
	}
	es := r.abi.EntrySize
	const n = 3
	for i := range n {
		// An operation no backend knows: answered as it is taken.
		r.abi.PutRequest(r.entries[i*es:(i+1)*es], 0xee, uint64(100+i), 0, nil)
	}
	r.idx.SetReqProd(n)
	if err := r.consume(true); err != nil {
		t.Fatal(err)
	}
	// Killed here: every answer written, none published.
	ids := func() []uint64 {
		cons, redo := l.resume(r.idx.RspProd(), r.size)
		if cons != n {
			t.Errorf("a successor takes on at %d, want %d", cons, n)
		}
		var ids []uint64
		var req blkif.Request
		for _, i := range redo {
			r.abi.Parse(l.raw(i, es), &req)
			ids = append(ids, req.ID)
		}
		return ids
	}
	if got := ids(); fmt.Sprint(got) != "[100 101 102]" {
		t.Errorf("before push a successor serves again %v, want [100 101 102]", got)
	}
	r.push()
	if got := ids(); len(got) != 0 {
		t.Errorf("after push a successor serves again %v, want nothing", got)
	}
	if len(r.free) != int(r.size) {
		t.Errorf("%d slots free after push, want %d", len(r.free), r.size)
	}
}
