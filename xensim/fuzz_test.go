package xensim

import (
	"encoding/binary"
	"errors"
	"testing"

	"blkdom/gnttab"
)

// fuzzSetup allocates five frontend pages, page k filled with byte k+1,
// and grants them as refs 8..12: three to the backend, one read-only to
// the backend, one to another domain.
func fuzzSetup(t *testing.T) (*Domain, *Grants, []gnttab.Ref) {
	x := newXen(t)
	front := x.Domain(frontID)
	pages, err := front.AllocPages(5)
	if err != nil {
		t.Fatal(err)
	}
	refs := make([]gnttab.Ref, len(pages))
	for k, p := range pages {
		for i := range p.Mem {
			p.Mem[i] = byte(k + 1)
		}
		to := uint32(backID)
		if k == 4 {
			to = otherID
		}
		if refs[k], err = front.Grant(to, p.Frame, k == 3); err != nil {
			t.Fatal(err)
		}
	}
	if refs[0] != 8 {
		t.Fatalf("first ref %d, seeds assume 8", refs[0])
	}
	g, err := x.Domain(backID).OpenGrants()
	if err != nil {
		t.Fatal(err)
	}
	return front, g, refs
}

// FuzzMap maps guest-chosen refs: either every ref is good and the mapping
// shows the granted pages, or Map fails and nothing stays mapped.
func FuzzMap(f *testing.F) {
	ref := func(rs ...uint32) []byte {
		b := make([]byte, 4*len(rs))
		for i, r := range rs {
			binary.LittleEndian.PutUint32(b[4*i:], r)
		}
		return b
	}
	f.Add(uint32(frontID), false, ref(8, 9, 10))
	f.Add(uint32(frontID), true, ref(8, 11))
	f.Add(uint32(frontID), false, ref(11, 11, 8))
	f.Add(uint32(frontID), false, ref(12))
	f.Add(uint32(frontID), false, ref(0, 1<<31))
	f.Add(uint32(backID), false, ref(8))
	f.Add(uint32(1<<32-1), true, []byte{})
	f.Fuzz(func(t *testing.T, dom uint32, writable bool, raw []byte) {
		front, g, all := fuzzSetup(t)
		refs := make([]gnttab.Ref, len(raw)/4)
		for i := range refs {
			refs[i] = gnttab.Ref(binary.LittleEndian.Uint32(raw[4*i:]))
		}
		m, err := g.Map(dom, refs, writable)
		if err == nil {
			for i, r := range refs {
				if m.Mem[i*gnttab.PageSize] != byte(r-all[0]+1) {
					t.Fatalf("page %d of the mapping does not show ref %d", i, r)
				}
			}
			if err := g.Unmap(m); err != nil {
				t.Fatal(err)
			}
		} else if len(g.maps) != 0 {
			t.Fatalf("failed Map recorded a mapping: %v", err)
		}
		for _, r := range all {
			if c := front.GrantMapCount(r); c != 0 {
				t.Fatalf("ref %d left mapped %d times (Map err %v)", r, c, err)
			}
		}
	})
}

// FuzzCopy copies guest-chosen segments: each gets a status, a failure
// never panics, and every good segment moves the right bytes.
func FuzzCopy(f *testing.F) {
	f.Add(uint32(frontID), uint32(8), uint16(0), uint16(4096), false)
	f.Add(uint32(frontID), uint32(11), uint16(512), uint16(512), true)
	f.Add(uint32(frontID), uint32(9), uint16(4095), uint16(2), true)
	f.Add(uint32(frontID), uint32(12), uint16(0), uint16(1), false)
	f.Add(uint32(0xffff), uint32(8), uint16(65535), uint16(0), false)
	f.Fuzz(func(t *testing.T, dom, ref uint32, offset, length uint16, toGrant bool) {
		_, g, _ := fuzzSetup(t)
		local := make([]byte, min(int(length), 2*gnttab.PageSize))
		for i := range local {
			local[i] = 0xee
		}
		segs := []gnttab.CopySegment{{Dom: dom, Ref: gnttab.Ref(ref), Offset: offset, Local: local, ToGrant: toGrant}}
		err := g.Copy(segs)
		if (err == nil) != (segs[0].Status == gnttab.StatusOK) {
			t.Fatalf("Copy = %v but status %v", err, segs[0].Status)
		}
		if err != nil && !errors.Is(err, segs[0].Status) {
			t.Fatalf("Copy = %v does not wrap %v", err, segs[0].Status)
		}
		if err != nil || toGrant {
			return
		}
		want := byte(ref - 8 + 1)
		for i, b := range local {
			if b != want {
				t.Fatalf("byte %d copied from ref %d is %#x, want %#x", i, ref, b, want)
			}
		}
	})
}
