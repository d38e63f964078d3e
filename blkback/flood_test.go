package blkback_test

import (
	"testing"
	"time"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/xensim"
)

// A frontend that notifies as fast as it can on an empty ring gets few
// wakeups of the backend (XSA-332): the back-off keeps its port masked,
// doubling up to a second. Its real requests are still served, and so is
// another guest's disk meanwhile.
func TestEventFloodIsThrottled(t *testing.T) {
	bed := newBedWith(t, blkback.Options{PollTime: -1})
	pathA, _ := newImage(t, 1<<20)
	pathB, _ := newImage(t, 1<<20)
	fa := connect(t, bed, xensim.Disk{Frontend: 1, Devid: 51712, Params: pathA}, blkfront.Options{})
	fb := connect(t, bed, xensim.Disk{Frontend: 2, Devid: 51712, Params: pathB}, blkfront.Options{})
	buf := make([]byte, 4096)
	notifies := 0
	for t0 := time.Now(); time.Since(t0) < 500*time.Millisecond; notifies++ {
		if err := fa.Notify(); err != nil {
			t.Fatal(err)
		}
		if notifies%1000 == 0 {
			do(t, fb, blkif.OpRead, 0, buf) // the other guest is served throughout
		}
	}
	var spurious uint64
	bed.Backend.EachDevice(func(fe uint32, _, _ string, s blkback.Stats) {
		if fe == 1 {
			spurious = s.Spurious
		}
	})
	t.Logf("%d notifications in 500 ms woke the backend %d times", notifies, spurious)
	// 1+1+2+4+...+256 ms: about ten wakeups fit in half a second.
	if spurious == 0 || spurious > 20 {
		t.Errorf("%d spurious wakeups from %d notifications, want 1..20", spurious, notifies)
	}
	do(t, fa, blkif.OpWrite, 0, buf) // within the back-off's second
	closeFrontend(t, fa)
	closeFrontend(t, fb)
}
