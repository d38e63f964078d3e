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

// TestLateReferences plays the bug described in the package comment on the
// real network stack: a write's pages are still in TCP's retransmit queue
// when blkdom completes the request, and TCP sends them again.
func TestLateReferences(t *testing.T) {
	p := loadProbesForTest(t)
	z := newZeroCopyPeer(t, nil)
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
	// They are references in flight, counted only globally.
	z.awaitRetransmit(t)
	assertCounts(t, p, testDisk, func(c Counts) bool { return c == Counts{} }, "none while in flight")
	assertNoEvent(t, p)
	before, err := p.Global()
	if err != nil {
		t.Fatal(err)
	}
	if before.Total() != 0 || before.InFlight[HookRetransmit] == 0 || before.InFlight[HookXmit] == 0 {
		t.Errorf("global counts %+v while in flight, want in-flight references at retransmit and xmit, none late", before)
	}

	// The first half of the requests completes; TCP retransmits again.
	completed := time.Now()
	if err := p.Complete(testDom, testDisk, done); err != nil {
		t.Fatal(err)
	}
	z.awaitRetransmit(t)
	assertCounts(t, p, testDisk, func(c Counts) bool { return c.Retransmit > 0 && c.Xmit > 0 }, "retransmit and xmit")
	assertCounts(t, p, otherDisk, func(c Counts) bool { return c == Counts{} }, "none for the other domain's disk")

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

	// Now that nothing is in flight, every event names a completed grant
	// and its page, and their number is the counters' (nothing lost).
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
		case e.Since <= 0 || e.Since > time.Since(completed):
			t.Errorf("event %+v: %v since completion, completed %v ago", e, e.Since, time.Since(completed))
		}
	}
	disk, err := p.Counts(testDisk)
	if err != nil {
		t.Fatal(err)
	}
	counted := map[Hook]uint64{HookRetransmit: disk.Retransmit, HookXmit: disk.Xmit, HookDrop: disk.Drop, HookConsume: disk.Consume}
	for h, n := range counted {
		if hooks[h] != n {
			t.Errorf("%d %v events, counted %d", hooks[h], h, n)
		}
	}
	global, err := p.Global()
	if err != nil {
		t.Fatal(err)
	}
	if inFlight := global.InFlight; inFlight[HookRetransmit] <= before.InFlight[HookRetransmit] {
		t.Errorf("in-flight retransmits %d after the first half completed, %d before: the second half is in flight still",
			inFlight[HookRetransmit], before.InFlight[HookRetransmit])
	}
	if global.InFlight = disk.InFlight; global != disk {
		t.Errorf("global late counts %+v differ from the only disk's %+v", global, disk)
	}
	runs, err := p.Runs()
	if err != nil {
		t.Fatal(err)
	}
	ran := map[string]uint64{}
	for _, r := range runs {
		ran[r.Hook] = r.Count
	}
	// A hook that counted late references ran (once per buffer, which
	// can hold several of the pages).
	for hook, n := range map[string]uint64{"tcp_retransmit_skb": disk.Retransmit,
		"net_dev_start_xmit": disk.Xmit, "kfree_skb": disk.Drop, "consume_skb": disk.Consume} {
		if n > 0 && ran[hook] == 0 {
			t.Errorf("%s never ran, counted %d late references", hook, n)
		}
	}
	t.Logf("late references after completion: %+v; runs %v", disk, runs)
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

// TestNilProbes: what a caller holds after a failed Load watches nothing
// and fails nothing.
func TestNilProbes(t *testing.T) {
	var p *Probes
	if err := p.Complete(testDom, testDisk, grefs()); err != nil {
		t.Error(err)
	}
	if err := p.MarkGranted(0xffffea0000000040, testDom, 1); err != nil {
		t.Error(err)
	}
	if c, err := p.Counts(testDisk); c != (Counts{}) || err != nil {
		t.Errorf("Counts = %+v, %v", c, err)
	}
	if c, err := p.Global(); c != (Counts{}) || err != nil {
		t.Errorf("Global = %+v, %v", c, err)
	}
	p.SetReadDeadline(time.Now())
	var e Event
	if err := p.ReadEvent(&e); !errors.Is(err, os.ErrClosed) {
		t.Errorf("ReadEvent = %v, want os.ErrClosed", err)
	}
	if err := p.Close(); err != nil {
		t.Error(err)
	}
}

// TestClose: Close ends a blocked ReadEvent, can be repeated, and later
// calls fail instead of crashing.
func TestClose(t *testing.T) {
	requireRoot(t)
	p, err := Load(Options{})
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error)
	go func() {
		var e Event
		readErr <- p.ReadEvent(&e)
	}()
	time.Sleep(50 * time.Millisecond)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-readErr; !errors.Is(err, os.ErrClosed) {
		t.Errorf("ReadEvent during Close = %v, want os.ErrClosed", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if err := p.Complete(testDom, testDisk, grefs()); err == nil {
		t.Error("Complete after Close succeeded")
	}
	if _, err := p.Counts(testDisk); err == nil {
		t.Error("Counts after Close succeeded")
	}
}

// TestPersistentGrants: grants that stay mapped from request to request
// (blkif's persistent grants) are in flight again after Begin, so the next
// request's own transmissions do not count, and late again after Complete.
func TestPersistentGrants(t *testing.T) {
	p, z := completedPeer(t)
	refs := grefs()
	sendAndCount := func() uint64 {
		t.Helper()
		if err := z.send(); err != nil {
			t.Fatal(err)
		}
		if err := z.receive(); err != nil {
			t.Fatal(err)
		}
		n, err := p.LateRefs(testDisk)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	completed := sendAndCount()
	if completed < peerPages {
		t.Fatalf("sending %d completed pages counted %d late references", peerPages, completed)
	}
	if err := p.Begin(testDom, refs); err != nil {
		t.Fatal(err)
	}
	if n := sendAndCount(); n != completed {
		t.Errorf("late references grew from %d to %d while the grants were in flight again", completed, n)
	}
	if err := p.Complete(testDom, testDisk, refs); err != nil {
		t.Fatal(err)
	}
	if n := sendAndCount(); n < completed+peerPages {
		t.Errorf("late references %d after completing again, want at least %d", n, completed+peerPages)
	}
	c, err := p.Counts(testDisk)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := p.LateRefs(testDisk); n != c.Total() {
		t.Errorf("LateRefs %d, Counts %+v", n, c)
	}
}

func TestOptionsPages(t *testing.T) {
	for _, tc := range []struct {
		pages, want int
		ok          bool
	}{
		{0, DefaultPages, true},
		{100, 100, true},
		{-1, 0, false},
		{maxPages + 1, 0, false},
	} {
		if !tc.ok {
			p, err := Load(Options{Pages: tc.pages})
			var le *LoadError
			if err == nil || errors.As(err, &le) {
				p.Close()
				t.Errorf("Load(Pages: %d) = %v, want an options error", tc.pages, err)
			}
			continue
		}
		requireRoot(t)
		p, err := Load(Options{Pages: tc.pages})
		if err != nil {
			t.Fatal(err)
		}
		if got := p.maps.Granted.MaxEntries(); got != uint32(tc.want) {
			t.Errorf("Pages %d: granted map holds %d, want %d", tc.pages, got, tc.want)
		}
		if got := p.maps.Completed.MaxEntries(); got != uint32(tc.want) {
			t.Errorf("Pages %d: completed map holds %d, want %d", tc.pages, got, tc.want)
		}
		p.Close()
	}
}
