package ebpf

import (
	"testing"

	"blkdom/gnttab"
)

// segmentRefs is a request with the most segments a ring slot holds.
var segmentRefs = func() []gnttab.Ref {
	refs := make([]gnttab.Ref, 11)
	for i := range refs {
		refs[i] = gnttab.Ref(500 + i)
	}
	return refs
}()

func TestCompleteAllocs(t *testing.T) {
	p := loadProbesForTest(t)
	allocs := testing.AllocsPerRun(100, func() {
		if err := p.Complete(testDom, testDisk, segmentRefs); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Complete allocates %v times per call", allocs)
	}
}

func BenchmarkComplete(b *testing.B) {
	p := loadProbesForTest(b)
	b.ReportAllocs()
	for b.Loop() {
		if err := p.Complete(testDom, testDisk, segmentRefs); err != nil {
			b.Fatal(err)
		}
	}
}

// completedPeer is a zerocopy connection whose buffer pages are granted and
// their requests completed, so every transmission of the buffer makes
// events.
func completedPeer(t testing.TB) (*Probes, *zeroCopyPeer) {
	t.Helper()
	p := loadProbesForTest(t)
	z := newZeroCopyPeer(t, nil)
	z.learn(t)
	if err := z.receive(); err != nil {
		t.Fatal(err)
	}
	refs := grefs()
	for i, page := range z.pages {
		if err := p.MarkGranted(page, testDom, refs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Complete(testDom, testDisk, refs); err != nil {
		t.Fatal(err)
	}
	return p, z
}

// recordBytes is the room an event takes in the ring buffer: an 8-byte
// header and the event.
const recordBytes = 8 + eventSize

// fillEvents sends the buffer until at least n events wait in the ring.
func fillEvents(t testing.TB, p *Probes, z *zeroCopyPeer, n int) {
	t.Helper()
	for p.events.AvailableBytes() < n*recordBytes {
		if err := z.send(); err != nil {
			t.Fatal(err)
		}
		if err := z.receive(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReadEventAllocs(t *testing.T) {
	p, z := completedPeer(t)
	fillEvents(t, p, z, 200)
	var e Event
	allocs := testing.AllocsPerRun(100, func() {
		if err := p.ReadEvent(&e); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("ReadEvent allocates %v times per event", allocs)
	}
	if e.Dom != testDom || e.Disk != testDisk {
		t.Errorf("last event %+v, want dom %d disk %d", e, testDom, testDisk)
	}
}

// BenchmarkEvents sends the buffer and reads the events its transmission
// makes: ns/op is the cost of one late reference, probe and reader together.
func BenchmarkEvents(b *testing.B) {
	p, z := completedPeer(b)
	b.ReportAllocs()
	var e Event
	for b.Loop() {
		if p.events.AvailableBytes() == 0 {
			fillEvents(b, p, z, 1)
		}
		if err := p.ReadEvent(&e); err != nil {
			b.Fatal(err)
		}
	}
}

func TestBeginAllocs(t *testing.T) {
	p := loadProbesForTest(t)
	allocs := testing.AllocsPerRun(100, func() {
		if err := p.Begin(testDom, segmentRefs); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Begin allocates %v times per call", allocs)
	}
}
