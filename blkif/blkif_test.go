package blkif

import (
	"testing"

	"blkdom/gnttab"
)

// The layouts, as Xen's io/blkif.h compiles for each ABI (offsetof and
// sizeof of blkif_request, blkif_request_indirect, blkif_request_discard
// and blkif_response), and the ring sizes its ring.h macros give.
func TestLayouts(t *testing.T) {
	tests := []struct {
		abi                                           ABI
		entry, id, sector, seg, discard, indID, indGr int
		ring1, ring2, ring16                          uint32
	}{
		{X86_64, 112, 8, 16, 24, 24, 8, 28, 32, 64, 512},
		{X86_32, 108, 4, 12, 20, 20, 4, 24, 32, 64, 512},
	}
	for _, tt := range tests {
		a := tt.abi
		got := []int{a.EntrySize, a.ID, a.Sector, a.Seg, a.DiscardSectors, a.IndID, a.IndGrefs}
		want := []int{tt.entry, tt.id, tt.sector, tt.seg, tt.discard, tt.indID, tt.indGr}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%s: field %d is %d, want %d", a.Name, i, got[i], want[i])
			}
		}
		for pages, want := range map[int]uint32{1: tt.ring1, 2: tt.ring2, 16: tt.ring16} {
			if n := a.RingEntries(pages); n != want {
				t.Errorf("%s: %d-page ring has %d entries, want %d", a.Name, pages, n, want)
			}
		}
	}
}

func TestABIFor(t *testing.T) {
	for proto, want := range map[string]string{"": "x86_32-abi", "x86_32-abi": "x86_32-abi", "x86_64-abi": "x86_64-abi"} {
		a, err := ABIFor(proto)
		if err != nil || a.Name != want {
			t.Errorf("ABIFor(%q) = %s, %v; want %s", proto, a.Name, err, want)
		}
	}
	for _, bad := range []string{"arm-abi", "x86_64", "garbage"} {
		if _, err := ABIFor(bad); err == nil {
			t.Errorf("ABIFor(%q) accepted", bad)
		}
	}
}

// A request survives PutRequest then Parse in both layouts, and a response
// WriteResponse then ParseResponse.
func TestRoundTrip(t *testing.T) {
	for _, a := range []ABI{X86_64, X86_32} {
		segs := []Segment{{Ref: 7, First: 0, Last: 7}, {Ref: 0xdeadbeef, First: 3, Last: 5}}
		slot := make([]byte, a.EntrySize)
		a.PutRequest(slot, OpWrite, 0x1122334455667788, 0x99aabbccddeeff00, segs)
		r := Request{Segs: make([]Segment, MaxDirectSegments)}
		a.Parse(slot, &r)
		if r.Op != OpWrite || r.DataOp != OpWrite || r.ID != 0x1122334455667788 || r.Sector != 0x99aabbccddeeff00 || r.NSegs != 2 {
			t.Fatalf("%s: parsed %+v", a.Name, r)
		}
		for i := range segs {
			if r.Segs[i] != segs[i] {
				t.Errorf("%s: segment %d is %+v, want %+v", a.Name, i, r.Segs[i], segs[i])
			}
		}
		WriteResponse(slot, 42, OpWrite, StatusNotSupported)
		if id, op, st := ParseResponse(slot); id != 42 || op != OpWrite || st != StatusNotSupported {
			t.Errorf("%s: response %d %d %d", a.Name, id, op, st)
		}
	}
}

// An indirect request names its pages; its segment count says how many.
func TestParseIndirect(t *testing.T) {
	a := X86_64
	slot := make([]byte, a.EntrySize)
	slot[0], slot[1] = OpIndirect, OpRead
	slot[2], slot[3] = 0x01, 0x02 // 513 segments: two indirect pages
	slot[a.IndGrefs] = 9
	slot[a.IndGrefs+4] = 10
	var r Request
	a.Parse(slot, &r)
	if r.Op != OpIndirect || r.DataOp != OpRead || r.NSegs != 513 || r.Indirect != 2 ||
		r.IndirectRefs[0] != 9 || r.IndirectRefs[1] != 10 {
		t.Fatalf("parsed %+v", r)
	}
	if SegmentsPerIndirectPage != gnttab.PageSize/8 {
		t.Fatal("segments per indirect page")
	}
}

func TestStateName(t *testing.T) {
	for s, want := range map[int]string{StateUnknown: "Unknown", StateInitWait: "InitWait",
		StateConnected: "Connected", StateClosed: "Closed", 7: "7", -1: "-1"} {
		if got := StateName(s); got != want {
			t.Errorf("StateName(%d) = %q, want %q", s, got, want)
		}
	}
}
