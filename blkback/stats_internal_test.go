package blkback

import (
	"strings"
	"testing"
	"time"

	"blkdom/blkif"
)

// Each operation's histogram gets its requests and their exact sum; the
// all-operations histogram (xenstore's) adds them up.
func TestLatencyByOperation(t *testing.T) {
	var st deviceStats
	for _, c := range []struct {
		op uint8
		d  time.Duration
	}{
		{blkif.OpRead, 1500 * time.Microsecond},
		{blkif.OpRead, 1700*time.Nanosecond + 1},
		{blkif.OpWrite, 3 * time.Second},
		{blkif.OpFlushDiskcache, 10 * time.Microsecond},
		{blkif.OpWriteBarrier, 20 * time.Microsecond},
		{blkif.OpDiscard, time.Hour},
		{99, time.Millisecond},
	} {
		st.countLatency(c.op, c.d)
	}
	s := st.snapshot(-1)
	want := [NumLatencyOps]struct {
		sum     time.Duration
		buckets map[int]uint64
	}{
		latencyRead:    {1500*time.Microsecond + 1701*time.Nanosecond, map[int]uint64{11: 1, 1: 1}},
		latencyWrite:   {3 * time.Second, map[int]uint64{22: 1}},
		latencyFlush:   {30 * time.Microsecond, map[int]uint64{4: 1, 5: 1}},
		latencyDiscard: {time.Hour, map[int]uint64{LatencyBuckets - 1: 1}},
		latencyOther:   {time.Millisecond, map[int]uint64{10: 1}},
	}
	var total [LatencyBuckets]uint64
	for i, w := range want {
		got := s.Ops[i]
		if got.Sum != w.sum {
			t.Errorf("%s: sum %v, want %v", LatencyOps[i], got.Sum, w.sum)
		}
		for k, n := range got.Latency {
			if n != w.buckets[k] {
				t.Errorf("%s: bucket %d holds %d, want %d", LatencyOps[i], k, n, w.buckets[k])
			}
			total[k] += w.buckets[k]
		}
	}
	if s.Latency != total {
		t.Errorf("all operations: %v, want %v", s.Latency, total)
	}
}

// Label values are escaped as the exposition format wants.
func TestEscapeLabel(t *testing.T) {
	if got, want := escapeLabel("a\"b\\c\nd"), `a\"b\\c\nd`; got != want {
		t.Errorf("%q, want %q", got, want)
	}
	if strings.Contains(escapeLabel("xvda"), `\`) {
		t.Error("escaped a plain name")
	}
}
