package blkback_test

import (
	"testing"

	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/xensim"
)

// The data path allocates nothing: a request's whole round trip, frontend
// and simulated Xen included, is measured process-wide.
func TestRequestPathAllocatesNothing(t *testing.T) {
	bed := newBed(t)
	path, _ := newImage(t, 1<<20)
	f := connect(t, bed, xensim.Disk{Frontend: 1, Devid: 51712, Params: path}, blkfront.Options{})
	defer closeFrontend(t, f)
	buf := make([]byte, maxDirect)
	for _, op := range []uint8{blkif.OpWrite, blkif.OpRead, blkif.OpFlushDiskcache} {
		n := len(buf)
		if op == blkif.OpFlushDiskcache {
			n = 0
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
}

func BenchmarkRequest(b *testing.B) {
	for _, bc := range []struct {
		name string
		op   uint8
		size int
	}{
		{"read-4k", blkif.OpRead, 4096},
		{"write-4k", blkif.OpWrite, 4096},
		{"read-44k", blkif.OpRead, maxDirect},
		{"write-44k", blkif.OpWrite, maxDirect},
	} {
		b.Run(bc.name, func(b *testing.B) {
			path, _ := newImage(b, 16<<20)
			f := connect(b, newBed(b), xensim.Disk{Frontend: 1, Devid: 51712, Params: path}, blkfront.Options{})
			defer closeFrontend(b, f)
			buf := make([]byte, bc.size)
			b.SetBytes(int64(bc.size))
			b.ReportAllocs()
			b.ResetTimer() // the machine's start-up is not a request's cost
			b.RunParallel(func(pb *testing.PB) {
				buf := append([]byte(nil), buf...)
				for pb.Next() {
					if st, err := f.Do(bc.op, 0, buf); err != nil || st != blkif.StatusOK {
						b.Errorf("status %d, %v", st, err)
						return
					}
				}
			})
		})
	}
}
