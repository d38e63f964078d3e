package blkback_test

import (
	"slices"
	"sync"
	"testing"
	"time"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/gnttab"
	"blkdom/xensim"
)

// recorder is a Probes that remembers what the backend reports; its late
// reference count is the number of grants it was told about, so the test
// can see that count reach the published statistics.
type recorder struct {
	mu     sync.Mutex
	calls  []completion
	begins int // grants Begin was told of
}

func (r *recorder) Begin(dom uint16, refs []gnttab.Ref) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.begins += len(refs)
	return nil
}

type completion struct {
	dom  uint16
	disk uint32
	refs []gnttab.Ref
}

func (r *recorder) Complete(dom uint16, disk uint32, refs []gnttab.Ref) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, completion{dom, disk, slices.Clone(refs)})
	return nil
}

func (r *recorder) LateRefs(disk uint32) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n uint64
	for _, c := range r.calls {
		if c.disk == disk {
			n += uint64(len(c.refs))
		}
	}
	return n, nil
}

// Every completed data request reports its frontend, disk and exactly
// its grants to the probes, and the probes' count is published.
func TestProbesToldOfCompletions(t *testing.T) {
	rec := &recorder{}
	bed := newBedWith(t, blkback.Options{Probes: rec, StatsInterval: 20 * time.Millisecond})
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 4, Devid: 51712, Params: path}
	f := connect(t, bed, d, blkfront.Options{Persistent: true})
	do(t, f, blkif.OpWrite, 0, make([]byte, 3*4096))
	do(t, f, blkif.OpRead, 0, make([]byte, 4096))
	do(t, f, blkif.OpFlushDiskcache, 0, nil)
	rec.mu.Lock()
	calls := slices.Clone(rec.calls)
	rec.mu.Unlock()
	if len(calls) != 2 || len(calls[0].refs) != 3 || len(calls[1].refs) != 1 {
		t.Fatalf("probes told %+v; want a 3-grant write and a 1-grant read", calls)
	}
	if calls[0].dom != 4 || calls[1].disk != calls[0].disk {
		t.Errorf("completions %+v: want frontend 4, one disk", calls)
	}
	rec.mu.Lock()
	if rec.begins != 4 {
		t.Errorf("Begin told of %d persistent grants, want 4", rec.begins)
	}
	rec.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, _ := bed.Dom0.Read(d.BackendPath() + "/statistics/late_refs")
		if v == "4" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("late_refs %q, want 4", v)
		}
		time.Sleep(10 * time.Millisecond)
	}
	closeFrontend(t, f)
}
