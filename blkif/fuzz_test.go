package blkif

import (
	"slices"
	"testing"
)

// Both x86 layouts: whatever bytes a frontend leaves in a slot, Parse
// reads only the slot and decodes a request that, encoded again in the
// same layout by the frontend's encoders, decodes to the same request; and
// a request built from parts decodes to those parts.
func FuzzABI(f *testing.F) {
	f.Add(false, make([]byte, X86_64.EntrySize), uint8(OpWrite), uint64(7), uint64(8), []byte{8, 0, 0, 0, 0, 7, 0, 0})
	f.Add(true, make([]byte, X86_32.EntrySize), uint8(OpIndirect), ^uint64(0), uint64(1)<<40, []byte{1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add(true, make([]byte, X86_32.EntrySize), uint8(OpDiscard), uint64(1), uint64(2), []byte{})
	f.Fuzz(func(t *testing.T, x86_32 bool, slot []byte, op uint8, id, sector uint64, segBytes []byte) {
		a := X86_64
		if x86_32 {
			a = X86_32
		}
		if len(slot) < a.EntrySize {
			return
		}
		// Any slot: decode, encode, decode again.
		var r1, r2 Request
		r1.Segs = make([]Segment, MaxDirectSegments)
		r2.Segs = make([]Segment, MaxDirectSegments)
		a.Parse(slices.Clip(slot[:a.EntrySize]), &r1)
		again := make([]byte, a.EntrySize)
		encode(a, again, &r1)
		a.Parse(again, &r2)
		if !sameRequest(&r1, &r2) {
			t.Fatalf("%s: %+v encoded and decoded again is %+v", a.Name, r1, r2)
		}
		// A request from parts.
		var segs []Segment
		for i := 0; i+8 <= len(segBytes) && len(segs) < MaxDirectSegments; i += 8 {
			var s Segment
			ParseSegment(segBytes[i:], &s)
			segs = append(segs, s)
		}
		r := Request{Segs: make([]Segment, MaxDirectSegments)}
		switch op {
		case OpIndirect, OpDiscard:
			return // built by encode above from the parsed slot
		}
		clear(slot[:a.EntrySize])
		a.PutRequest(slot[:a.EntrySize], op, id, sector, segs)
		a.Parse(slot[:a.EntrySize], &r)
		if r.Op != op || r.DataOp != op || r.ID != id || r.Sector != sector || r.NSegs != len(segs) ||
			!slices.Equal(r.Segs[:len(segs)], segs) || r.Indirect != 0 {
			t.Fatalf("%s: op %d id %d sector %d segs %v decoded as %+v", a.Name, op, id, sector, segs, r)
		}
	})
}

// encode writes r into slot in layout a, as a frontend would.
func encode(a ABI, slot []byte, r *Request) {
	switch r.Op {
	case OpIndirect:
		a.PutIndirect(slot, r.DataOp, r.ID, r.Sector, r.NSegs, r.IndirectRefs[:])
	case OpDiscard:
		a.PutDiscard(slot, r.ID, r.Sector, r.DiscardSectors, r.DiscardFlags)
	default:
		a.PutRequest(slot, r.Op, r.ID, r.Sector, r.Segs[:min(r.NSegs, MaxDirectSegments)])
		slot[1] = uint8(r.NSegs) // a count above 11 is kept as written
	}
}

// sameRequest compares what Parse decoded: the segments it decoded, and
// the indirect grants only for an indirect request.
func sameRequest(x, y *Request) bool {
	n := min(x.NSegs, MaxDirectSegments)
	if x.Op == OpIndirect || x.Op == OpDiscard {
		n = 0
	}
	return x.Op == y.Op && x.DataOp == y.DataOp && x.ID == y.ID && x.Sector == y.Sector &&
		x.NSegs == y.NSegs && x.Indirect == y.Indirect && x.DiscardSectors == y.DiscardSectors &&
		x.DiscardFlags == y.DiscardFlags && slices.Equal(x.Segs[:n], y.Segs[:n]) &&
		(x.Op != OpIndirect || x.IndirectRefs == y.IndirectRefs)
}
