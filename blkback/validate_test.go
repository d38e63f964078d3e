package blkback

import (
	"testing"

	"blkdom/blkif"
)

// Whatever a frontend writes into a slot, parsing and validation neither
// panic nor accept a request that reaches outside the disk, outside a
// granted page, or writes to a read-only disk. The oracle restates the
// rules independently: a request that moves data (or discards) must lie
// inside the disk and be aligned to its logical block size; a flush or
// barrier without data names no sectors (Linux blkfront sends all ones)
// and is accepted whatever its sector.
func FuzzValidate(f *testing.F) {
	a := blkif.X86_64
	seed := make([]byte, a.EntrySize)
	a.PutRequest(seed, blkif.OpWrite, 1, 8, []blkif.Segment{{Ref: 8, First: 0, Last: 7}})
	f.Add(seed, false, uint16(512), false)
	seed2 := append([]byte(nil), seed...)
	seed2[0] = blkif.OpIndirect
	f.Add(seed2, true, uint16(4096), true)
	f.Add(make([]byte, a.EntrySize), false, uint16(512), true)
	f.Fuzz(func(t *testing.T, slot []byte, readOnly bool, sectorSize uint16, discard bool) {
		if len(slot) < a.EntrySize {
			return
		}
		g := geometry{sectorSize: 512, readOnly: readOnly, maxSegments: blkif.MaxDirectSegments, discard: discard}
		g.sectors.Store(1 << 20)
		if sectorSize == 4096 {
			g.sectorSize = 4096
		}
		r := blkif.Request{Segs: make([]blkif.Segment, g.maxSegments)}
		a.Parse(slot[:a.EntrySize], &r)
		if g.validate(&r) != blkif.StatusOK {
			return
		}
		align := uint64(g.sectorSize / 512)
		inside := func(start, count uint64) {
			t.Helper()
			if start%align != 0 || count%align != 0 {
				t.Fatalf("accepted misaligned sectors %d+%d (block %d)", start, count, g.sectorSize)
			}
			if end := start + count; end > g.sectors.Load() || end < start {
				t.Fatalf("accepted sectors %d+%d of %d", start, count, g.sectors.Load())
			}
		}
		switch r.Op {
		case blkif.OpRead, blkif.OpWrite:
			if r.NSegs == 0 {
				t.Fatal("accepted a read or write without segments")
			}
		case blkif.OpWriteBarrier, blkif.OpFlushDiskcache:
		case blkif.OpDiscard:
			if !discard || readOnly {
				t.Fatalf("accepted a discard (offered %v, read-only %v)", discard, readOnly)
			}
			inside(r.Sector, r.DiscardSectors)
			return
		default:
			t.Fatalf("accepted op %d, which was not offered", r.Op)
		}
		if r.NSegs > blkif.MaxDirectSegments {
			t.Fatalf("accepted %d segments", r.NSegs)
		}
		if readOnly && (r.Op == blkif.OpWrite || r.NSegs > 0 && r.DataOp != blkif.OpRead) {
			t.Fatal("accepted a write on a read-only disk")
		}
		if r.NSegs == 0 {
			return // a flush or barrier alone: any sector
		}
		var count uint64
		for _, s := range r.Segs[:r.NSegs] {
			if s.First > s.Last || s.Last >= blkif.SectorsPerPage {
				t.Fatalf("accepted segment %+v", s)
			}
			if uint64(s.First)%align != 0 || uint64(s.Last+1)%align != 0 {
				t.Fatalf("accepted segment %+v misaligned to %d", s, g.sectorSize)
			}
			count += uint64(s.Last-s.First) + 1
		}
		inside(r.Sector, count)
	})
}
