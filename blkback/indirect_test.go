package blkback_test

import (
	"encoding/binary"
	"testing"

	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/gnttab"
	"blkdom/xensim"
)

// An indirect request whose header and indirect page a frontend fills with
// anything, served by the real backend on the simulated machine: it is
// answered (never a hang), with OK exactly when every descriptor is valid
// and inside the disk; no grant stays mapped; the device stays connected.
// Descriptor grant numbers below 2^16 name the guest's data pages (so the
// fuzzer reaches valid requests), others are taken as written.
func FuzzIndirect(f *testing.F) {
	bed := newBed(f)
	path, _ := newImage(f, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	fe := connect(f, bed, d, blkfront.Options{IndirectSegments: 256})
	guest := bed.Xen.Domain(1)
	pages, err := guest.AllocPages(6)
	if err != nil {
		f.Fatal(err)
	}
	refs := make([]gnttab.Ref, len(pages))
	for i, p := range pages {
		if refs[i], err = guest.Grant(0, p.Frame, false); err != nil {
			f.Fatal(err)
		}
	}
	ind, data := refs[:2], refs[2:]
	sectors := fe.Disk.Sectors
	a := fe.ABI()
	desc := func(segs ...[3]int) []byte {
		b := make([]byte, 8*len(segs))
		for i, s := range segs {
			binary.LittleEndian.PutUint32(b[8*i:], uint32(s[0]))
			b[8*i+4], b[8*i+5] = uint8(s[1]), uint8(s[2])
		}
		return b
	}
	f.Add(uint8(blkif.OpRead), uint16(2), uint64(0), desc([3]int{0, 0, 7}, [3]int{1, 0, 7}))
	f.Add(uint8(blkif.OpWrite), uint16(3), sectors-24, desc([3]int{0, 0, 7}, [3]int{1, 0, 7}, [3]int{2, 0, 7}))
	f.Add(uint8(blkif.OpWrite), uint16(1), sectors-7, desc([3]int{0, 0, 7}))
	f.Add(uint8(blkif.OpRead), uint16(257), uint64(0), desc([3]int{0, 0, 7}))
	f.Add(uint8(blkif.OpRead), uint16(1), uint64(0), desc([3]int{70000, 0, 7}))
	f.Add(uint8(blkif.OpFlushDiskcache), uint16(1), uint64(0), desc([3]int{3, 7, 0}))
	f.Fuzz(func(t *testing.T, dataOp uint8, nsegs uint16, sector uint64, page []byte) {
		// The indirect pages: what the fuzzer wrote, with small grant
		// numbers mapped onto the data pages. A valid request (at most
		// 256 segments) has its descriptors in the first page.
		clear(pages[0].Mem)
		clear(pages[1].Mem)
		copy(pages[1].Mem, page[copy(pages[0].Mem, page):])
		valid := (dataOp == blkif.OpRead || dataOp == blkif.OpWrite) && nsegs >= 1 && nsegs <= 256
		var count uint64
		for i := range min(int(nsegs), 256) {
			e := pages[0].Mem[8*i:]
			if r := binary.LittleEndian.Uint32(e); r < 1<<16 {
				binary.LittleEndian.PutUint32(e, uint32(data[int(r)%len(data)]))
			} else {
				valid = false
			}
			if e[4] > e[5] || e[5] >= blkif.SectorsPerPage {
				valid = false
			}
			count += uint64(e[5]-e[4]) + 1
		}
		valid = valid && sector <= sectors && count <= sectors-sector
		st, err := fe.Raw(func(slot []byte) {
			a.PutIndirect(slot, dataOp, 0, sector, int(nsegs), ind)
		})
		if err != nil {
			t.Fatalf("op %d, %d segments at %d: %v", dataOp, nsegs, sector, err)
		}
		switch {
		case valid && st != blkif.StatusOK:
			t.Fatalf("valid op %d, %d segments at %d: status %d", dataOp, nsegs, sector, st)
		case !valid && st == blkif.StatusOK:
			t.Fatalf("invalid op %d, %d segments at %d accepted", dataOp, nsegs, sector)
		}
		for _, r := range refs {
			if c := guest.GrantMapCount(r); c != 0 {
				t.Fatalf("grant %d still mapped %d times", r, c)
			}
		}
		if s, err := bed.Dom0.Read(d.BackendPath() + "/state"); err != nil || s != "4" {
			t.Fatalf("backend state %q, %v after op %d, %d segments", s, err, dataOp, nsegs)
		}
	})
}
