package blkback_test

import (
	"strings"
	"testing"
	"time"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/xensim"
)

// The statistics published in xenstore count exactly the requests made.
func TestStatisticsPublished(t *testing.T) {
	bed := newBedWith(t, blkback.Options{StatsInterval: 20 * time.Millisecond})
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	f := connect(t, bed, d, blkfront.Options{})
	buf := make([]byte, 8192)
	for range 5 {
		do(t, f, blkif.OpRead, 0, buf)
	}
	for range 3 {
		do(t, f, blkif.OpWrite, 16, buf[:4096])
	}
	do(t, f, blkif.OpFlushDiskcache, 0, nil)
	if st, _ := f.Do(blkif.OpRead, f.Disk.Sectors, buf); st != blkif.StatusError {
		t.Fatalf("read past the end: status %d", st)
	}
	want := blkback.Stats{RdReq: 5, WrReq: 3, FReq: 1, RdSect: 5 * 16, WrSect: 3 * 8, Invalid: 1, LateRefs: -1}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, err := blkback.ParseStats(func(key string) (string, error) {
			return bed.Dom0.Read(d.BackendPath() + "/statistics/" + key)
		})
		var total uint64
		for _, n := range got.Latency {
			total += n
		}
		got.Latency = [blkback.LatencyBuckets]uint64{}
		// How often the frontend was notified depends on timing: at most
		// once per response, at least once.
		notified := got.Notifies >= 1 && got.Notifies <= 10
		got.Notifies, got.PollHits, got.PollUs, got.Spurious = 0, 0, 0, 0
		if err == nil && got == want && total == 10 && notified {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("statistics %+v (%d latencies), %v; want %+v (10)", got, total, err, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var prom strings.Builder
	if err := bed.Backend.WritePrometheus(&prom); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		`blkdom_requests_total{frontend="1",devid="51712",op="read"} 5`,
		`blkdom_sectors_total{frontend="1",devid="51712",op="write"} 24`,
		`blkdom_invalid_requests_total{frontend="1",devid="51712"} 1`,
		`blkdom_latency_seconds_bucket{frontend="1",devid="51712",le="+Inf"} 10`,
		`blkdom_latency_seconds_count{frontend="1",devid="51712"} 10`,
		"# TYPE blkdom_latency_seconds histogram",
	} {
		if !strings.Contains(prom.String(), line+"\n") {
			t.Errorf("Prometheus text lacks %q:\n%s", line, prom.String())
		}
	}
	closeFrontend(t, f)
}

func TestPercentile(t *testing.T) {
	var s blkback.Stats
	if s.Percentile(0.5) != 0 {
		t.Error("percentile of nothing")
	}
	s.Latency[3] = 90 // below 8 µs
	s.Latency[10] = 9 // below 1024 µs
	s.Latency[20] = 1
	for q, want := range map[float64]uint64{0.5: 8, 0.9: 8, 0.95: 1024, 0.99: 1024, 1: 1 << 20} {
		if got := s.Percentile(q); got != want {
			t.Errorf("p%v = %d, want %d", q*100, got, want)
		}
	}
}
