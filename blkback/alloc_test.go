package blkback_test

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/xensim"
)

// The data path allocates nothing: a request's whole round trip, frontend
// and simulated Xen included, is measured process-wide, for the plainest
// frontend (11 segments, every page mapped per request) and for what
// Linux blkfront negotiates (persistent grants, 128 KiB indirect requests,
// whose indirect pages the cache keeps too). The backend's periodic work
// (statistics, the resize check, the rescan) allocates and is not the data
// path: it is put off past the test, or a slow machine (500 flushes took
// 18 s beside other work) charges its allocations to the requests.
func TestRequestPathAllocatesNothing(t *testing.T) {
	for _, fc := range []struct {
		name string
		opts blkfront.Options
		size int
	}{
		{"plain", blkfront.Options{}, maxDirect},
		{"linux", blkfront.Options{Persistent: true, IndirectSegments: 32}, 128 << 10},
	} {
		t.Run(fc.name, func(t *testing.T) {
			bed := newBedWith(t, blkback.Options{StatsInterval: time.Hour, ResizeInterval: time.Hour,
				RescanInterval: time.Hour})
			path, _ := newImage(t, 1<<20)
			f := connect(t, bed, xensim.Disk{Frontend: 1, Devid: 51712, Params: path}, fc.opts)
			defer closeFrontend(t, f)
			buf := make([]byte, fc.size)
			for _, op := range []uint8{blkif.OpWrite, blkif.OpRead, blkif.OpFlushDiskcache} {
				n := len(buf)
				if op == blkif.OpFlushDiskcache {
					n = 0
				}
				// The first round trips map what persistent grants
				// keep from then on.
				for range 64 {
					f.Do(op, 8, buf[:n])
				}
				allocs := testing.AllocsPerRun(500, func() {
					if st, err := f.Do(op, 8, buf[:n]); err != nil || st != blkif.StatusOK {
						t.Fatalf("op %d: status %d, %v", op, st, err)
					}
				})
				if allocs != 0 {
					t.Errorf("op %d: %.2f allocations per request, want 0", op, allocs)
				}
			}
		})
	}
}

// BenchmarkRequest is the whole simulated round trip (frontend, simulated
// Xen and backend) with 8 requests in flight per CPU (or one, for qd1:
// the latency of a lone request, event to event), for each I/O engine,
// with and without persistent grants (without them every request maps and
// unmaps its pages).
func BenchmarkRequest(b *testing.B) {
	for _, engine := range blkback.Engines {
		for _, persistent := range []bool{false, true} {
			for _, bc := range []struct {
				name  string
				op    uint8
				size  int
				depth int
			}{
				{"read-4k", blkif.OpRead, 4096, 8},
				{"read-4k-qd1", blkif.OpRead, 4096, 1},
				{"write-4k", blkif.OpWrite, 4096, 8},
				{"read-44k", blkif.OpRead, maxDirect, 8},
				{"write-44k", blkif.OpWrite, maxDirect, 8},
				// Linux blkfront's largest request by default (32
				// indirect segments): what its 1 MiB sequential I/O
				// becomes.
				{"read-128k", blkif.OpRead, 128 << 10, 8},
				{"read-1m", blkif.OpRead, 1 << 20, 8},
			} {
				name := fmt.Sprintf("%s/persistent=%v/%s", engine, persistent, bc.name)
				b.Run(name, func(b *testing.B) {
					benchRequests(b, blkback.Options{Engine: engine}, blkfront.Options{Persistent: persistent, IndirectSegments: 256}, bc.op, bc.size, bc.depth)
				})
			}
		}
	}
}

// benchRequests runs op requests of size bytes, depth in flight per CPU
// (depth 1: one request at a time in all).
func benchRequests(b *testing.B, opts blkback.Options, fopts blkfront.Options, op uint8, size, depth int) {
	path, _ := newImage(b, 16<<20)
	f := connect(b, newBedWith(b, opts), xensim.Disk{Frontend: 1, Devid: 51712, Params: path}, fopts)
	defer closeFrontend(b, f)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	run := func(next func() bool) {
		buf := make([]byte, size)
		for next() {
			if st, err := f.Do(op, 0, buf); err != nil || st != blkif.StatusOK {
				b.Errorf("status %d, %v", st, err)
				return
			}
		}
	}
	cpu0 := processCPU(b)
	b.ResetTimer() // the machine's start-up is not a request's cost
	if depth == 1 {
		run(b.Loop)
	} else {
		b.SetParallelism(depth)
		b.RunParallel(func(pb *testing.PB) { run(pb.Next) })
	}
	// The process's CPU time per request (frontend, simulated Xen and
	// backend together): where a system call or a thread switch is dear,
	// as in a Xen PV domain, this is what the design changes.
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// processCPU is the process's user and system time so far.
func processCPU(b *testing.B) time.Duration {
	c, err := blkback.ProcessCPU()
	if err != nil {
		b.Fatal(err)
	}
	return c.User + c.System
}

// BenchmarkSteadyState is a long run of 4 KiB reads and writes with
// persistent grants, 16 in flight, that reports the garbage collections it
// caused: run with -benchtime 1000000x, the steady state allocates nothing
// and so collects nothing (a run over two minutes long sees the runtime's
// periodic collection, and KiB-allocated shows it had nothing to do with
// requests).
func BenchmarkSteadyState(b *testing.B) {
	path, _ := newImage(b, 16<<20)
	f := connect(b, newBed(b), xensim.Disk{Frontend: 1, Devid: 51712, Params: path},
		blkfront.Options{Persistent: true, IndirectSegments: 256})
	defer closeFrontend(b, f)
	for range 64 { // every slot's scratch and every grant is made once
		do(b, f, blkif.OpWrite, 0, make([]byte, 4096))
	}
	var before, after runtime.MemStats
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	runtime.ReadMemStats(&before)
	var n atomic.Uint64
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 4096)
		for pb.Next() {
			op := uint8(blkif.OpRead)
			if n.Add(1)%2 == 0 {
				op = blkif.OpWrite
			}
			if st, err := f.Do(op, 8*(n.Load()%1024), buf); err != nil || st != blkif.StatusOK {
				b.Errorf("status %d, %v", st, err)
				return
			}
		}
	})
	runtime.ReadMemStats(&after)
	// A run longer than two minutes also sees the runtime's periodic
	// collection (forced when none ran for 2 minutes): the bytes
	// allocated in all say whether anything but time caused it.
	b.ReportMetric(float64(after.NumGC-before.NumGC), "gc-cycles")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/1024, "KiB-allocated")
}

// BenchmarkRequestLedger is BenchmarkRequest's round trip with each ring's
// ledger in the process's memory (no StateDir: it does not survive the
// process) and in a file on a tmpfs (/dev/shm, as blkdom serve's
// /run/blkdom): what keeping the ledger where a successor finds it costs
// a request. The ledger's stores are made in both.
func BenchmarkRequestLedger(b *testing.B) {
	shm, err := os.MkdirTemp("/dev/shm", "blkdom-bench")
	if err != nil {
		b.Skipf("no tmpfs at /dev/shm: %v", err)
	}
	b.Cleanup(func() { os.RemoveAll(shm) })
	for _, state := range []struct{ name, dir string }{{"memory", ""}, {"tmpfs", shm}} {
		for _, bc := range []struct {
			name  string
			op    uint8
			depth int
		}{{"read-4k-qd1", blkif.OpRead, 1}, {"write-4k", blkif.OpWrite, 8}} {
			b.Run(state.name+"/"+bc.name, func(b *testing.B) {
				benchRequests(b, blkback.Options{StateDir: state.dir}, blkfront.Options{Persistent: true}, bc.op, 4096, bc.depth)
			})
		}
	}
}
