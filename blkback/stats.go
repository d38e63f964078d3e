package blkback

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"blkdom/blkif"
)

// deviceStats counts a device's requests the way Linux blkback's sysfs
// statistics do, plus errors, the requests in flight, and a latency
// histogram. Counters only grow; every ring of a device adds to the same
// counters, with atomic adds only, so the data path allocates nothing.
type deviceStats struct {
	ooReq    atomic.Uint64 // times every slot was in flight (Linux's oo_req)
	rdReq    atomic.Uint64
	wrReq    atomic.Uint64
	fReq     atomic.Uint64 // flushes and barriers
	dsReq    atomic.Uint64 // discards
	rdSect   atomic.Uint64
	wrSect   atomic.Uint64
	errors   atomic.Uint64 // requests that failed while executing
	invalid  atomic.Uint64 // requests refused by validation
	inflight atomic.Int64
	// The loop's event handling: notifications sent to the frontend,
	// polls of an empty ring that found work (each a notification the
	// frontend did not need to send, and a wakeup saved), the time spent
	// polling, and events that found no work.
	notifies, pollHits, pollNs, spurious atomic.Uint64
	// grantMaps counts the guest's pages mapped for requests: every page
	// of a request without persistent grants, the persistent grants the
	// cache maps on first use, and the pages it had no room for.
	grantMaps atomic.Uint64
	// dataIovecs counts the iovecs reads and writes were submitted with:
	// one per segment, less the segments that followed the one before
	// them in our memory too and were merged into its iovec.
	dataIovecs atomic.Uint64
	// latency counts requests by operation and by time from taking them
	// off the ring to answering them: bucket k holds latencies below 2^k
	// microseconds. latencySum is each operation's exact total, in
	// nanoseconds.
	latency    [NumLatencyOps][LatencyBuckets]atomic.Uint64
	latencySum [NumLatencyOps]atomic.Uint64
}

// LatencyBuckets is the size of the latency histogram: its last bucket
// holds everything of 2^22 µs (about 4 s) and more.
const LatencyBuckets = 24

// countRequest counts a validated request as it starts executing.
func (st *deviceStats) countRequest(req *blkif.Request) {
	var sectors uint64
	for _, s := range req.Segs[:req.NSegs] {
		sectors += uint64(s.Last-s.First) + 1
	}
	switch req.DataOp {
	case blkif.OpRead:
		st.rdReq.Add(1)
		st.rdSect.Add(sectors)
	case blkif.OpWrite:
		st.wrReq.Add(1)
		st.wrSect.Add(sectors)
	case blkif.OpWriteBarrier, blkif.OpFlushDiskcache:
		st.fReq.Add(1)
		st.wrSect.Add(sectors)
	case blkif.OpDiscard:
		st.dsReq.Add(1)
	}
}

func (st *deviceStats) countError()   { st.errors.Add(1) }
func (st *deviceStats) countInvalid() { st.invalid.Add(1) }

// The operations latencies are kept for, as LatencyOps names them.
const (
	latencyRead = iota
	latencyWrite
	latencyFlush // flushes and barriers
	latencyDiscard
	latencyOther // an operation blkif does not define (refused)
	// NumLatencyOps is the number of operations with a latency histogram.
	NumLatencyOps
)

// LatencyOps names the operations of Stats.Ops.
var LatencyOps = [NumLatencyOps]string{"read", "write", "flush", "discard", "other"}

// latencyOp is the histogram a request's operation is filed under.
func latencyOp(op uint8) int {
	switch op {
	case blkif.OpRead:
		return latencyRead
	case blkif.OpWrite:
		return latencyWrite
	case blkif.OpWriteBarrier, blkif.OpFlushDiskcache:
		return latencyFlush
	case blkif.OpDiscard:
		return latencyDiscard
	}
	return latencyOther
}

// countLatency files one answered request (valid or refused) under its
// operation and latency.
func (st *deviceStats) countLatency(op uint8, d time.Duration) {
	i := latencyOp(op)
	k := min(bits.Len64(uint64(d.Microseconds())), LatencyBuckets-1)
	st.latency[i][k].Add(1)
	st.latencySum[i].Add(uint64(max(d, 0)))
}

// Stats is a snapshot of one device's statistics, as published in
// xenstore under the backend directory's "statistics" key.
type Stats struct {
	OOReq, RdReq, WrReq, FReq, DsReq uint64
	RdSect, WrSect                   uint64
	Errors, Invalid                  uint64
	InFlight                         int64
	// LateRefs counts network buffers that referenced this disk's granted
	// pages after their request completed (the eBPF probes); -1 when the
	// probes are off.
	LateRefs int64
	// Latency is the histogram of every operation together (what
	// xenstore gets); Ops has each operation's, with its exact sum.
	Latency [LatencyBuckets]uint64
	Ops     [NumLatencyOps]OpLatency
	// The rings' event handling: notifications sent to the frontend;
	// polls of an empty ring that found work, each a notification the
	// frontend did not send and a wakeup saved; microseconds spent
	// polling; events that found no work (XSA-332 backs off on them).
	Notifies, PollHits, PollUs, Spurious uint64
	// GrantMaps counts the guest's pages mapped for requests (a
	// persistent grant once, on first use): with persistent grants it
	// stops growing once the frontend's pool is cached, unless the pool is
	// larger than the cache.
	GrantMaps uint64
	// DataIovecs counts the iovecs reads and writes were submitted with:
	// their segments, less those merged with the one before because their
	// pages are adjacent in the backend's memory too (each iovec costs the
	// kernel a pass pinning its pages).
	DataIovecs uint64
}

// OpLatency is one operation's latency histogram, buckets as in
// Stats.Latency, and the exact sum of its latencies.
type OpLatency struct {
	Latency [LatencyBuckets]uint64
	Sum     time.Duration
}

func (st *deviceStats) snapshot(lateRefs int64) Stats {
	s := Stats{
		OOReq: st.ooReq.Load(), RdReq: st.rdReq.Load(), WrReq: st.wrReq.Load(),
		FReq: st.fReq.Load(), DsReq: st.dsReq.Load(), RdSect: st.rdSect.Load(),
		WrSect: st.wrSect.Load(), Errors: st.errors.Load(), Invalid: st.invalid.Load(),
		InFlight: st.inflight.Load(), LateRefs: lateRefs,
		Notifies: st.notifies.Load(), PollHits: st.pollHits.Load(), PollUs: st.pollNs.Load() / 1000,
		Spurious: st.spurious.Load(), GrantMaps: st.grantMaps.Load(),
		DataIovecs: st.dataIovecs.Load(),
	}
	for i := range s.Ops {
		op := &s.Ops[i]
		for k := range op.Latency {
			op.Latency[k] = st.latency[i][k].Load()
			s.Latency[k] += op.Latency[k]
		}
		op.Sum = time.Duration(st.latencySum[i].Load())
	}
	return s
}

// statKeys names the xenstore keys of Stats, in order. The first seven
// are Linux blkback's sysfs names; the last six, the event handling's,
// grant_maps and data_iovecs, may be missing (written by an older blkdom)
// and then read as 0.
var statKeys = [...]string{"oo_req", "rd_req", "wr_req", "f_req", "ds_req", "rd_sect", "wr_sect",
	"errors", "invalid", "inflight", "late_refs", "latency_us_log2",
	"notifies", "poll_hits", "poll_us", "spurious_events", "grant_maps", "data_iovecs"}

// Keys returns the statistics as xenstore key/value pairs. The latency
// histogram is one key: the bucket counts, space-separated.
func (s Stats) Keys() [][2]string {
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	hist := make([]string, len(s.Latency))
	for i, v := range s.Latency {
		hist[i] = u(v)
	}
	vals := [...]string{u(s.OOReq), u(s.RdReq), u(s.WrReq), u(s.FReq), u(s.DsReq), u(s.RdSect), u(s.WrSect),
		u(s.Errors), u(s.Invalid), strconv.FormatInt(s.InFlight, 10), strconv.FormatInt(s.LateRefs, 10),
		strings.Join(hist, " "), u(s.Notifies), u(s.PollHits), u(s.PollUs), u(s.Spurious), u(s.GrantMaps),
		u(s.DataIovecs)}
	kv := make([][2]string, len(statKeys))
	for i, k := range statKeys {
		kv[i] = [2]string{k, vals[i]}
	}
	return kv
}

// ParseStats reads statistics back from their keys (read from xenstore by
// "blkdom stat").
func ParseStats(get func(key string) (string, error)) (Stats, error) {
	var s Stats
	u := []*uint64{&s.OOReq, &s.RdReq, &s.WrReq, &s.FReq, &s.DsReq, &s.RdSect, &s.WrSect, &s.Errors, &s.Invalid}
	for i, p := range u {
		v, err := get(statKeys[i])
		if err != nil {
			return s, err
		}
		if *p, err = strconv.ParseUint(v, 10, 64); err != nil {
			return s, fmt.Errorf("%s: %w", statKeys[i], err)
		}
	}
	for _, p := range []struct {
		key string
		v   *int64
	}{{"inflight", &s.InFlight}, {"late_refs", &s.LateRefs}} {
		v, err := get(p.key)
		if err != nil {
			return s, err
		}
		if *p.v, err = strconv.ParseInt(v, 10, 64); err != nil {
			return s, fmt.Errorf("%s: %w", p.key, err)
		}
	}
	hist, err := get("latency_us_log2")
	if err != nil {
		return s, err
	}
	for i, f := range strings.Fields(hist) {
		if i >= len(s.Latency) {
			break
		}
		if s.Latency[i], err = strconv.ParseUint(f, 10, 64); err != nil {
			return s, fmt.Errorf("latency_us_log2: %w", err)
		}
	}
	optional := []*uint64{&s.Notifies, &s.PollHits, &s.PollUs, &s.Spurious, &s.GrantMaps, &s.DataIovecs}
	for i, p := range optional {
		key := statKeys[len(statKeys)-len(optional)+i]
		v, err := get(key)
		if err != nil {
			continue // an older blkdom
		}
		if *p, err = strconv.ParseUint(v, 10, 64); err != nil {
			return s, fmt.Errorf("%s: %w", key, err)
		}
	}
	return s, nil
}

// Percentile is the upper bound, in microseconds, of the histogram bucket
// holding the q-th quantile of latencies (0 < q <= 1); 0 with no data.
func (s Stats) Percentile(q float64) uint64 {
	var total uint64
	for _, n := range s.Latency {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := uint64(q*float64(total) + 0.5)
	var seen uint64
	for k, n := range s.Latency {
		seen += n
		if seen >= max(rank, 1) {
			return 1 << k
		}
	}
	return 1 << (LatencyBuckets - 1)
}
