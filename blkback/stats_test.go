package blkback_test

import (
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/xensim"
)

// The statistics published in xenstore, and the Prometheus exposition (as
// Prometheus's own parser reads it), count exactly the requests made.
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
		got.Notifies, got.PollHits, got.PollUs, got.Spurious, got.GrantMaps, got.DataIovecs = 0, 0, 0, 0, 0, 0
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
	families := parsePrometheus(t, prom.String())
	labels := map[string]string{"frontend": "1", "devid": "51712", "device": "xvda"}
	for _, c := range []struct {
		family string
		op     string
		want   float64
	}{
		{"blkdom_requests_total", "read", 5},
		{"blkdom_requests_total", "flush", 1},
		{"blkdom_read_bytes_total", "", 5 * 8192},
		{"blkdom_written_bytes_total", "", 3 * 4096},
		{"blkdom_invalid_requests_total", "", 1},
		{"blkdom_errors_total", "", 0},
	} {
		m := series(t, families, c.family, labels, c.op)
		if m == nil {
			continue
		}
		if v := m.GetCounter().GetValue(); v != c.want {
			t.Errorf("%s{op=%q} = %v, want %v", c.family, c.op, v, c.want)
		}
	}
	// Time is in seconds, Prometheus's base unit.
	var pollUs uint64
	bed.Backend.EachDevice(func(_ uint32, _, _ string, s blkback.Stats) { pollUs = s.PollUs })
	if m := series(t, families, "blkdom_poll_seconds_total", labels, ""); m != nil {
		if v := m.GetCounter().GetValue(); v != float64(pollUs)/1e6 {
			t.Errorf("blkdom_poll_seconds_total = %v, want %v (poll_us %d)", v, float64(pollUs)/1e6, pollUs)
		}
	}
	if fam := families["blkdom_latency_seconds"]; fam.GetType() != dto.MetricType_HISTOGRAM {
		t.Fatalf("blkdom_latency_seconds is a %v", fam.GetType())
	}
	// The read past the end was refused, and is timed as a read.
	for op, want := range map[string]uint64{"read": 6, "write": 3, "flush": 1, "discard": 0, "other": 0} {
		m := series(t, families, "blkdom_latency_seconds", labels, op)
		if m == nil {
			continue
		}
		h := m.GetHistogram()
		if h.GetSampleCount() != want || (want > 0) != (h.GetSampleSum() > 0) {
			t.Errorf("latency of %s: %d requests, sum %v; want %d", op, h.GetSampleCount(), h.GetSampleSum(), want)
		}
		if b := h.GetBucket(); len(b) != blkback.LatencyBuckets || b[len(b)-1].GetCumulativeCount() != want {
			t.Errorf("latency of %s: buckets %v", op, b)
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

// parsePrometheus parses an exposition with Prometheus's own parser.
func parsePrometheus(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	families, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("Prometheus cannot parse it: %v\n%s", err, text)
	}
	return families
}

// series finds the one series of family with labels (and op, if not
// empty), or reports that there is none.
func series(t *testing.T, families map[string]*dto.MetricFamily, family string, labels map[string]string, op string) *dto.Metric {
	t.Helper()
	var found []*dto.Metric
	for _, m := range families[family].GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		match := got["op"] == op
		for k, v := range labels {
			match = match && got[k] == v
		}
		if match {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Errorf("%s{op=%q}: %d series", family, op, len(found))
		return nil
	}
	return found[0]
}

// A disk's statistics are in xenstore as soon as it connects, not only
// after the first tick ("blkdom stat" lists it at once).
func TestStatisticsAtConnect(t *testing.T) {
	bed := newBedWith(t, blkback.Options{StatsInterval: time.Hour})
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	f := connect(t, bed, d, blkfront.Options{})
	defer closeFrontend(t, f)
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, err := blkback.ParseStats(func(key string) (string, error) {
			return bed.Dom0.Read(d.BackendPath() + "/statistics/" + key)
		})
		// The event channel fires once when bound: the rings' event
		// handling may have counted it.
		got.Notifies, got.PollHits, got.PollUs, got.Spurious, got.GrantMaps, got.DataIovecs = 0, 0, 0, 0, 0, 0
		if err == nil && got == (blkback.Stats{LateRefs: -1}) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("statistics %+v, %v after connecting", got, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// grant_maps counts the guest's pages mapped for requests: every page of
// every request without persistent grants, and with them each page of the
// frontend's pool once (the reference frontend keeps two pages per ring
// slot, 32 slots).
func TestGrantMapsCounted(t *testing.T) {
	const requests = 100
	for _, c := range []struct {
		persistent bool
		want       func(pages uint64) bool
	}{
		{false, func(n uint64) bool { return n == requests*2 }},
		{true, func(n uint64) bool { return n >= 2 && n <= 32*2 }},
	} {
		bed := newBed(t)
		path, _ := newImage(t, 1<<20)
		f := connect(t, bed, xensim.Disk{Frontend: 1, Devid: 51712, Params: path}, blkfront.Options{Persistent: c.persistent})
		buf := make([]byte, 2*4096)
		for range requests {
			do(t, f, blkif.OpRead, 0, buf)
		}
		var got uint64
		bed.Backend.EachDevice(func(_ uint32, _, _ string, s blkback.Stats) { got = s.GrantMaps })
		if !c.want(got) {
			t.Errorf("persistent %v: %d pages mapped for %d requests of 2 pages", c.persistent, got, requests)
		}
		closeFrontend(t, f)
	}
}

// data_iovecs counts the iovecs reads and writes went out with: a
// request's segments whose pages lie one after the other in the backend's
// memory go as one. Grant copy moves them through the backend's own
// buffer and a request mapped as one batch has its pages in one range, so
// each request is one iovec; persistent grants are mapped one by one, so
// a request has between one iovec and one per segment. The data itself
// stays right whichever way (the write is read back).
func TestDataIovecsCounted(t *testing.T) {
	const requests, pages = 50, 8
	for _, c := range []struct {
		name       string
		extra      map[string]string
		persistent bool
		min, max   uint64
	}{
		{"batch", nil, false, 2 * requests, 2 * requests},
		{"grant-copy", map[string]string{"blkdom-cache": "grant-copy"}, false, 2 * requests, 2 * requests},
		{"persistent", nil, true, 2 * requests, 2 * requests * pages},
	} {
		t.Run(c.name, func(t *testing.T) {
			bed := newBed(t)
			path, _ := newImage(t, 1<<20)
			f := connect(t, bed, xensim.Disk{Frontend: 1, Devid: 51712, Params: path, Extra: c.extra},
				blkfront.Options{Persistent: c.persistent})
			defer closeFrontend(t, f)
			buf, back := make([]byte, pages*4096), make([]byte, pages*4096)
			for i := range requests {
				for j := range buf {
					buf[j] = byte(i + j/4096)
				}
				do(t, f, blkif.OpWrite, 0, buf)
				do(t, f, blkif.OpRead, 0, back)
				if string(back) != string(buf) {
					t.Fatalf("request %d: read back differs from what was written", i)
				}
			}
			var got uint64
			bed.Backend.EachDevice(func(_ uint32, _, _ string, s blkback.Stats) { got = s.DataIovecs })
			if got < c.min || got > c.max {
				t.Errorf("%d iovecs for %d requests of %d pages, want %d..%d", got, 2*requests, pages, c.min, c.max)
			}
		})
	}
}
