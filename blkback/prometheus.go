package blkback

import (
	"fmt"
	"io"
)

// WritePrometheus writes every device's statistics, and the process's CPU
// time, in Prometheus's text exposition format.
func (b *Backend) WritePrometheus(w io.Writer) error {
	type dev struct {
		labels string
		s      Stats
	}
	var devs []dev
	b.EachDevice(func(fe uint32, devid string, s Stats) {
		devs = append(devs, dev{fmt.Sprintf(`frontend="%d",devid=%q`, fe, devid), s})
	})
	p := &printer{w: w}
	type value struct {
		labels string
		v      uint64
	}
	metric := func(name, kind, help string, get func(Stats) []value) {
		p.printf("# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
		for _, d := range devs {
			for _, v := range get(d.s) {
				p.printf("%s{%s%s} %d\n", name, d.labels, v.labels, v.v)
			}
		}
	}
	one := func(v uint64) []value { return []value{{"", v}} }
	metric("blkdom_requests_total", "counter", "Requests executed, by operation.", func(s Stats) []value {
		return []value{{`,op="read"`, s.RdReq}, {`,op="write"`, s.WrReq}, {`,op="flush"`, s.FReq}, {`,op="discard"`, s.DsReq}}
	})
	metric("blkdom_sectors_total", "counter", "512-byte sectors moved, by direction.", func(s Stats) []value {
		return []value{{`,op="read"`, s.RdSect}, {`,op="write"`, s.WrSect}}
	})
	metric("blkdom_errors_total", "counter", "Requests that failed while executing.", func(s Stats) []value { return one(s.Errors) })
	metric("blkdom_invalid_requests_total", "counter", "Requests refused by validation.", func(s Stats) []value { return one(s.Invalid) })
	metric("blkdom_ring_full_total", "counter", "Times every ring slot was in flight (Linux's oo_req).", func(s Stats) []value { return one(s.OOReq) })
	metric("blkdom_inflight_requests", "gauge", "Requests taken off the ring and not yet answered.", func(s Stats) []value { return one(uint64(max(s.InFlight, 0))) })
	metric("blkdom_late_references_total", "counter", "Network buffers referencing a granted page after its request completed (eBPF probes).", func(s Stats) []value {
		if s.LateRefs < 0 {
			return nil // probes off
		}
		return one(uint64(s.LateRefs))
	})
	// The histogram keeps no exact sum; each request counts at its bucket's
	// upper bound, so _sum is an upper estimate.
	p.printf("# HELP blkdom_latency_seconds Time from taking a request off the ring to answering it.\n# TYPE blkdom_latency_seconds histogram\n")
	for _, d := range devs {
		var count, sumUS uint64
		for k, n := range d.s.Latency {
			count += n
			sumUS += n << k
			le := "+Inf"
			if k < LatencyBuckets-1 {
				le = fmt.Sprint(float64(uint64(1)<<k) / 1e6)
			}
			p.printf("blkdom_latency_seconds_bucket{%s,le=%q} %d\n", d.labels, le, count)
		}
		p.printf("blkdom_latency_seconds_sum{%s} %g\nblkdom_latency_seconds_count{%s} %d\n", d.labels, float64(sumUS)/1e6, d.labels, count)
	}
	writeCPUPrometheus(p)
	return p.err
}

// printer writes formatted text and keeps the first error.
type printer struct {
	w   io.Writer
	err error
}

func (p *printer) printf(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, args...)
	}
}
