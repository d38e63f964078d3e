package blkback

import (
	"testing"

	"blkdom/blkif"
)

// Whatever a frontend writes into a slot, parsing and validation neither
// panic nor accept a request that reaches outside the disk, outside a
// granted page, or writes to a read-only disk.
func FuzzValidate(f *testing.F) {
	a := blkif.X86_64
	seed := make([]byte, a.EntrySize)
	a.PutRequest(seed, blkif.OpWrite, 1, 8, []blkif.Segment{{Ref: 8, First: 0, Last: 7}})
	f.Add(seed, false, uint16(512))
	seed2 := append([]byte(nil), seed...)
	seed2[0] = blkif.OpIndirect
	f.Add(seed2, true, uint16(4096))
	f.Add(make([]byte, a.EntrySize), false, uint16(512))
	f.Fuzz(func(t *testing.T, slot []byte, readOnly bool, sectorSize uint16) {
		if len(slot) < a.EntrySize {
			return
		}
		g := geometry{sectorSize: 512, readOnly: readOnly, maxSegments: blkif.MaxDirectSegments}
		g.sectors.Store(1 << 20)
		if sectorSize == 4096 {
			g.sectorSize = 4096
		}
		r := blkif.Request{Segs: make([]blkif.Segment, g.maxSegments)}
		a.Parse(slot[:a.EntrySize], &r)
		if g.validate(&r) != blkif.StatusOK {
			return
		}
		if r.Op == blkif.OpIndirect || r.Op == blkif.OpDiscard {
			t.Fatalf("accepted op %d, which was not offered", r.Op)
		}
		if r.NSegs > blkif.MaxDirectSegments {
			t.Fatalf("accepted %d segments", r.NSegs)
		}
		if readOnly && r.NSegs > 0 && r.DataOp != blkif.OpRead {
			t.Fatal("accepted a write on a read-only disk")
		}
		end := r.Sector
		for _, s := range r.Segs[:r.NSegs] {
			if s.First > s.Last || s.Last >= blkif.SectorsPerPage {
				t.Fatalf("accepted segment %+v", s)
			}
			end += uint64(s.Last-s.First) + 1
		}
		if end > g.sectors.Load() || end < r.Sector {
			t.Fatalf("accepted sectors %d..%d of %d", r.Sector, end, g.sectors.Load())
		}
	})
}
