package blkback

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// WritePrometheus writes every device's statistics, and the process's CPU
// time, in Prometheus's text exposition format (0.0.4). Every device's
// series is labelled with the frontend's domain id, the devid and the
// device's name ("xvda"). The caller adds what is not per device or CPU
// (blkdom_build_info).
func (b *Backend) WritePrometheus(w io.Writer) error {
	type dev struct {
		labels string
		s      Stats
	}
	var devs []dev
	b.EachDevice(func(fe uint32, devid, name string, s Stats) {
		devs = append(devs, dev{fmt.Sprintf(`frontend="%d",devid="%s",device="%s"`,
			fe, escapeLabel(devid), escapeLabel(name)), s})
	})
	p := &printer{w: w}
	type value struct {
		labels string
		v      string
	}
	metric := func(name, kind, help string, get func(Stats) []value) {
		p.printf("# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
		for _, d := range devs {
			for _, v := range get(d.s) {
				p.printf("%s{%s%s} %s\n", name, d.labels, v.labels, v.v)
			}
		}
	}
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	one := func(v uint64) []value { return []value{{"", u(v)}} }
	metric("blkdom_requests_total", "counter", "Requests executed, by operation.", func(s Stats) []value {
		return []value{{`,op="read"`, u(s.RdReq)}, {`,op="write"`, u(s.WrReq)}, {`,op="flush"`, u(s.FReq)}, {`,op="discard"`, u(s.DsReq)}}
	})
	metric("blkdom_read_bytes_total", "counter", "Bytes read from the image for the guest.", func(s Stats) []value { return one(s.RdSect * 512) })
	metric("blkdom_written_bytes_total", "counter", "Bytes written to the image for the guest.", func(s Stats) []value { return one(s.WrSect * 512) })
	metric("blkdom_errors_total", "counter", "Requests that failed while executing.", func(s Stats) []value { return one(s.Errors) })
	metric("blkdom_invalid_requests_total", "counter", "Requests refused by validation.", func(s Stats) []value { return one(s.Invalid) })
	metric("blkdom_ring_full_total", "counter", "Times every ring slot was in flight (Linux's oo_req).", func(s Stats) []value { return one(s.OOReq) })
	metric("blkdom_inflight_requests", "gauge", "Requests taken off the ring and not yet answered.", func(s Stats) []value { return one(uint64(max(s.InFlight, 0))) })
	metric("blkdom_notifications_total", "counter", "Event-channel notifications sent to the frontend.", func(s Stats) []value { return one(s.Notifies) })
	metric("blkdom_poll_hits_total", "counter", "Polls of an empty ring that found work: notifications the frontend did not send.", func(s Stats) []value { return one(s.PollHits) })
	metric("blkdom_poll_seconds_total", "counter", "Time the rings spent polling.", func(s Stats) []value {
		return []value{{"", strconv.FormatFloat(float64(s.PollUs)/1e6, 'f', -1, 64)}}
	})
	metric("blkdom_spurious_events_total", "counter", "Events from the frontend that found no work (XSA-332 backs off).", func(s Stats) []value { return one(s.Spurious) })
	metric("blkdom_grant_maps_total", "counter", "Guest pages mapped for requests (a persistent grant once, on first use).", func(s Stats) []value { return one(s.GrantMaps) })
	metric("blkdom_data_iovecs_total", "counter", "I/O vectors reads and writes were submitted with (their segments, pages adjacent in memory merged).", func(s Stats) []value { return one(s.DataIovecs) })
	metric("blkdom_late_references_total", "counter", "Network buffers referencing a granted page after its request completed (eBPF probes).", func(s Stats) []value {
		if s.LateRefs < 0 {
			return nil // probes off
		}
		return one(uint64(s.LateRefs))
	})
	p.printf("# HELP blkdom_latency_seconds Time from taking a request off the ring to answering it, by operation (refused requests included).\n# TYPE blkdom_latency_seconds histogram\n")
	for _, d := range devs {
		for i, op := range d.s.Ops {
			labels := d.labels + `,op="` + LatencyOps[i] + `"`
			var count uint64
			for k, n := range op.Latency {
				count += n
				le := "+Inf"
				if k < LatencyBuckets-1 {
					le = strconv.FormatFloat(float64(uint64(1)<<k)/1e6, 'g', -1, 64)
				}
				p.printf("blkdom_latency_seconds_bucket{%s,le=\"%s\"} %d\n", labels, le, count)
			}
			p.printf("blkdom_latency_seconds_sum{%s} %s\nblkdom_latency_seconds_count{%s} %d\n",
				labels, strconv.FormatFloat(op.Sum.Seconds(), 'g', -1, 64), labels, count)
		}
	}
	writeCPUPrometheus(p)
	return p.err
}

// escapeLabel escapes a label value as the exposition format wants.
var escapeLabel = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace

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
