package ebpf

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"blkdom/gnttab"
)

const (
	testDom   = 7
	otherDom  = 8
	testDisk  = 42
	otherDisk = 43
)

func loadProbesForTest(t testing.TB) *Probes {
	t.Helper()
	requireRoot(t)
	p, err := Load(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

// grefs are the grant references the tests give the pages of the buffer.
func grefs() []gnttab.Ref {
	refs := make([]gnttab.Ref, peerPages)
	for i := range refs {
		refs[i] = gnttab.Ref(100 + i)
	}
	return refs
}

// TestLateReferences plays the bug of docs/blkif.md section 6 on the real
// network stack: a write's pages are still in TCP's retransmit queue when
// blkdom completes the request, and TCP sends them again.
func TestLateReferences(t *testing.T) {
	p := loadProbesForTest(t)
	z := newZeroCopyPeer(t)
	refs := grefs()
	done, inFlight := refs[:peerPages/2], refs[peerPages/2:]

	if err := z.dropData(); err != nil {
		t.Fatal(err)
	}
	z.learn(t)
	// Completions that must not count: an earlier use of the in-flight
	// references (completed before their pages were mapped), and the same
	// reference numbers of another domain.
	if err := p.Complete(testDom, testDisk, inFlight); err != nil {
		t.Fatal(err)
	}
	if err := p.Complete(otherDom, otherDisk, done); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond) // the marks below must be later
	for i, page := range z.pages {
		if err := p.MarkGranted(page, testDom, refs[i]); err != nil {
			t.Fatal(err)
		}
	}

	// Control: TCP retransmits pages of requests that are still in flight.
	z.awaitRetransmit(t)
	assertCounts(t, p, testDisk, func(c Counts) bool { return c == Counts{} }, "none while in flight")
	assertNoEvent(t, p)

	// The first half of the requests completes; TCP retransmits again.
	completed := time.Now()
	if err := p.Complete(testDom, testDisk, done); err != nil {
		t.Fatal(err)
	}
	z.awaitRetransmit(t)
	elapsed := time.Since(completed)
	assertCounts(t, p, testDisk, func(c Counts) bool { return c.Retransmit > 0 && c.Xmit > 0 }, "retransmit and xmit")
	assertCounts(t, p, otherDisk, func(c Counts) bool { return c == Counts{} }, "none for the other domain's disk")
	global, err := p.Global()
	if err != nil {
		t.Fatal(err)
	}
	disk, _ := p.Counts(testDisk)
	if global != disk {
		t.Errorf("global counts %+v differ from the only disk's %+v", global, disk)
	}

	// Every event names a completed grant and its page; their number is
	// the counters' (nothing lost).
	pageOf := make(map[gnttab.Ref]uint64)
	for i, ref := range done {
		pageOf[ref] = z.pages[i]
	}
	hooks := make(map[Hook]uint64)
	for {
		var e Event
		p.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		err := p.ReadEvent(&e)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		hooks[e.Hook]++
		want, ok := pageOf[e.Gref]
		switch {
		case !ok:
			t.Errorf("event for grant %d, which is in flight: %+v", e.Gref, e)
		case e.Page != want || e.Dom != testDom || e.Disk != testDisk || e.Unmapped:
			t.Errorf("event %+v, want page %#x dom %d disk %d, mapped", e, want, testDom, testDisk)
		case e.Since <= 0 || e.Since > elapsed+time.Second:
			t.Errorf("event %+v: %v since completion, completed %v ago", e, e.Since, elapsed)
		}
	}
	disk, _ = p.Counts(testDisk)
	counted := map[Hook]uint64{HookRetransmit: disk.Retransmit, HookXmit: disk.Xmit, HookDrop: disk.Drop, HookConsume: disk.Consume}
	for h, n := range counted {
		if hooks[h] != n {
			t.Errorf("%d %v events, counted %d", hooks[h], h, n)
		}
	}
	t.Logf("late references after completion: %+v", disk)

	// Once the network lets the data through, the server receives it
	// intact, and the sender hears that the receiver got a copy.
	if err := z.passData(); err != nil {
		t.Fatal(err)
	}
	if err := z.receive(); err != nil {
		t.Fatal(err)
	}
	copied, notes, err := z.zeroCopyCopied()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("zerocopy notifications: %d, copied for the receiver: %v", notes, copied)
}

func assertCounts(t *testing.T, p *Probes, disk uint32, ok func(Counts) bool, want string) {
	t.Helper()
	c, err := p.Counts(disk)
	if err != nil {
		t.Fatal(err)
	}
	if !ok(c) {
		t.Errorf("disk %d counts %+v, want %s", disk, c, want)
	}
}

func assertNoEvent(t *testing.T, p *Probes) {
	t.Helper()
	var e Event
	p.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if err := p.ReadEvent(&e); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("ReadEvent = %+v, %v; want no event", e, err)
	}
}

// TestComplete checks the completed-grant map after Complete calls of
// various sizes, across the batch size.
func TestComplete(t *testing.T) {
	p := loadProbesForTest(t)
	for _, n := range []int{0, 1, 11, completeBatch, completeBatch + 1, 3*completeBatch + 5} {
		refs := make([]gnttab.Ref, n)
		for i := range refs {
			refs[i] = gnttab.Ref(1000*n + i)
		}
		before := kernelNow(t)
		if err := p.Complete(testDom, uint32(n), refs); err != nil {
			t.Fatalf("%d refs: %v", n, err)
		}
		for _, ref := range refs {
			var c probesCompletion
			key := probesGrefKey{Domid: testDom, Gref: uint32(ref)}
			if err := p.maps.Completed.Lookup(&key, &c); err != nil {
				t.Fatalf("%d refs: ref %d: %v", n, ref, err)
			}
			if c.Disk != uint32(n) || c.CompletedNs < before {
				t.Fatalf("%d refs: ref %d: %+v, want disk %d, completed after %d", n, ref, c, n, before)
			}
		}
	}
}

// TestLoadGrantTable: the grant-table kprobes attach where the kernel has
// kprobes and a grant table; elsewhere Load says so (after the verifier
// accepted them, or the reason would be ReasonKernel).
func TestLoadGrantTable(t *testing.T) {
	requireRoot(t)
	p, err := Load(Options{GrantTable: true})
	if haveGrantTableKprobes() {
		if err != nil {
			t.Fatal(err)
		}
		p.Close()
		return
	}
	var le *LoadError
	if !errors.As(err, &le) || le.Reason != ReasonNoKprobes {
		t.Fatalf("Load without kprobes or Xen = %v, want a LoadError with ReasonNoKprobes", err)
	}
	t.Log(err)
}

func haveGrantTableKprobes() bool {
	if _, err := os.Stat("/sys/bus/event_source/devices/kprobe"); err != nil {
		return false
	}
	syms, err := os.ReadFile("/proc/kallsyms")
	return err == nil && containsSymbol(string(syms), "gnttab_map_refs") && containsSymbol(string(syms), "gnttab_unmap_refs")
}

// containsSymbol reports whether kallsyms lists a symbol called name.
func containsSymbol(kallsyms, name string) bool {
	return strings.Contains(kallsyms, " "+name+"\n") || strings.Contains(kallsyms, " "+name+"\t")
}

// kernelNow reads CLOCK_MONOTONIC with a system call.
func kernelNow(t testing.TB) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// TestClock: the clock Complete and MarkGranted stamp with agrees with the
// kernel's CLOCK_MONOTONIC to within a little more than the clock's own
// error, now and later.
func TestClock(t *testing.T) {
	c, err := newClock()
	if err != nil {
		t.Fatal(err)
	}
	const slack = 50 * time.Microsecond
	for i := range 5 {
		before := kernelNow(t)
		got := c.now()
		after := kernelNow(t)
		if got+uint64(slack) < before || got > after+uint64(slack) {
			t.Errorf("clock says %d, kernel between %d and %d", got, before, after)
		}
		time.Sleep(time.Duration(i) * 10 * time.Millisecond)
	}
}
