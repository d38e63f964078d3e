package blkback

import (
	"encoding/binary"
	"fmt"

	"blkdom/gnttab"
)

// blkif operations (xen/include/public/io/blkif.h).
const (
	opRead           = 0
	opWrite          = 1
	opWriteBarrier   = 2
	opFlushDiskcache = 3
	opDiscard        = 5
	opIndirect       = 6
)

// Response statuses.
const (
	statusOK         = 0
	statusError      = -1
	statusNotSupport = -2
)

// XenbusState values, as written in the "state" keys.
const (
	stateUnknown      = 0
	stateInitialising = 1
	stateInitWait     = 2
	stateInitialised  = 3
	stateConnected    = 4
	stateClosing      = 5
	stateClosed       = 6
)

// Bits of the "info" key.
const (
	infoCDROM     = 1
	infoRemovable = 2
	infoReadOnly  = 4
)

const (
	// sectorShift converts between bytes and the protocol's 512-byte sectors,
	// in which sector numbers and segment bounds are always expressed.
	sectorShift = 9
	// sectorsPerPage bounds a segment's first_sect and last_sect.
	sectorsPerPage = gnttab.PageSize >> sectorShift
	// maxDirectSegments is BLKIF_MAX_SEGMENTS_PER_REQUEST.
	maxDirectSegments = 11
	// ringHeaderSize is the shared ring's index header.
	ringHeaderSize = 64
)

// abi is a frontend's request/response layout. x86_64 ("native" on the
// 64-bit machines blkdom runs on) aligns the 64-bit fields; x86_32 packs
// them. Offsets are checked against Xen's headers in proto_test.go.
type abi struct {
	name string
	// entrySize is the size of one ring slot: the union of a request and a
	// response, which is the request.
	entrySize int
	// Offsets inside a read/write request.
	id, sector, seg int
	// Offsets inside a discard request: its sector count.
	discardSectors int
	// Offsets inside an indirect request.
	indID, indSector, indGrefs int
}

var (
	abiX86_64 = abi{name: "x86_64-abi", entrySize: 112, id: 8, sector: 16, seg: 24,
		discardSectors: 24, indID: 8, indSector: 16, indGrefs: 28}
	abiX86_32 = abi{name: "x86_32-abi", entrySize: 108, id: 4, sector: 12, seg: 20,
		discardSectors: 20, indID: 4, indSector: 12, indGrefs: 24}
)

// abiFor maps the frontend's "protocol" key to a layout. An absent key means
// x86_32: that is what Linux blkback assumes on x86 (BLKIF_PROTOCOL_DEFAULT
// for a frontend too old to write the key), and blkdom follows the kernel
// that every existing guest was tested against.
func abiFor(protocol string) (abi, error) {
	switch protocol {
	case "", abiX86_32.name:
		return abiX86_32, nil
	case abiX86_64.name:
		return abiX86_64, nil
	}
	return abi{}, fmt.Errorf("unsupported protocol %q", protocol)
}

// ringEntries is how many slots fit in a ring of the given number of pages:
// rounded down to a power of two, as the frontend's macros do.
func (a abi) ringEntries(pages int) uint32 {
	n := uint32((pages*gnttab.PageSize - ringHeaderSize) / a.entrySize)
	p := uint32(1)
	for p*2 <= n {
		p *= 2
	}
	return p
}

// segment is one validated piece of a request: sectors first..last of the
// granted frame ref.
type segment struct {
	ref         gnttab.Ref
	first, last uint8
}

// request is blkdom's private copy of one ring request. It is filled once
// from the shared ring (XSA-155: the frontend may rewrite the slot at any
// time, so nothing is read from the ring twice), then validated, then used.
type request struct {
	op     uint8 // the operation as the frontend wrote it, echoed in the response
	dataOp uint8 // what to do: op, or the indirect request's inner operation
	id     uint64
	sector uint64
	nsegs  int
	// indirect is the number of indirect-segment pages, 0 for a direct request.
	indirect int
	// discardSectors is a discard request's length.
	discardSectors uint64
	// segs holds nsegs segments; its length is the ring's segment limit.
	segs []segment
	// indirectRefs holds the grants of the indirect-segment pages.
	indirectRefs [maxIndirectPages]gnttab.Ref
}

// maxIndirectPages is BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST.
const maxIndirectPages = 8

// parse copies one request out of its ring slot. slot must be exactly one
// private copy of the slot: parse never touches shared memory.
func (a abi) parse(slot []byte, r *request) {
	le := binary.LittleEndian
	r.op = slot[0]
	r.dataOp = r.op
	r.indirect = 0
	r.discardSectors = 0
	switch r.op {
	case opIndirect:
		r.dataOp = slot[1]
		r.nsegs = int(le.Uint16(slot[2:]))
		r.id = le.Uint64(slot[a.indID:])
		r.sector = le.Uint64(slot[a.indSector:])
		r.indirect = (r.nsegs + segmentsPerIndirectPage - 1) / segmentsPerIndirectPage
		for i := range r.indirectRefs {
			r.indirectRefs[i] = gnttab.Ref(le.Uint32(slot[a.indGrefs+4*i:]))
		}
	case opDiscard:
		r.nsegs = 0
		r.id = le.Uint64(slot[a.id:])
		r.sector = le.Uint64(slot[a.sector:])
		r.discardSectors = le.Uint64(slot[a.discardSectors:])
	default:
		r.nsegs = int(slot[1])
		r.id = le.Uint64(slot[a.id:])
		r.sector = le.Uint64(slot[a.sector:])
		n := min(r.nsegs, maxDirectSegments, len(r.segs))
		for i := 0; i < n; i++ {
			parseSegment(slot[a.seg+8*i:], &r.segs[i])
		}
	}
}

// segmentsPerIndirectPage is how many 8-byte segments one indirect page holds.
const segmentsPerIndirectPage = gnttab.PageSize / 8

// parseSegment decodes one blkif_request_segment: gref u32, first_sect u8,
// last_sect u8, two bytes of padding.
func parseSegment(b []byte, s *segment) {
	s.ref = gnttab.Ref(binary.LittleEndian.Uint32(b))
	s.first = b[4]
	s.last = b[5]
}

// writeResponse fills the response fields of a ring slot one by one in the
// frontend's layout (XSA-216: never copy a struct with uninitialised
// padding into guest memory). The layouts agree on the offsets; only the
// slot size differs.
func writeResponse(slot []byte, id uint64, op uint8, status int16) {
	le := binary.LittleEndian
	le.PutUint64(slot[0:], id)
	slot[8] = op
	le.PutUint16(slot[10:], uint16(status))
}

// validate checks a parsed request against the disk and what was
// negotiated, and returns statusOK or the status to answer it with at once.
// Indirect segments are not known yet at this point; execute validates
// them once they have been copied out of their pages.
func (g *geometry) validate(r *request) int16 {
	switch r.dataOp {
	case opRead, opWrite:
		if r.nsegs == 0 {
			return statusError
		}
	case opWriteBarrier, opFlushDiskcache:
		if r.indirect > 0 {
			return statusError // Linux blkfront never sends these indirect
		}
	default:
		return statusNotSupport
	}
	if r.op == opIndirect {
		if g.maxSegments <= maxDirectSegments {
			return statusNotSupport // indirect descriptors were not offered
		}
		if r.nsegs > g.maxSegments {
			return statusError
		}
		return g.checkWrite(r)
	}
	if r.nsegs > maxDirectSegments {
		return statusError
	}
	if st := g.checkWrite(r); st != statusOK {
		return st
	}
	return g.checkSegments(r)
}

// checkWrite refuses anything that changes the disk on a read-only device.
// A flush without data changes nothing and is allowed.
func (g *geometry) checkWrite(r *request) int16 {
	if g.readOnly && (r.dataOp == opWrite || r.nsegs > 0 && r.dataOp != opRead) {
		return statusError
	}
	return statusOK
}

// checkSegments checks every segment's bounds and alignment to the logical
// block size, and that the whole transfer lies inside the disk.
func (g *geometry) checkSegments(r *request) int16 {
	align := uint64(g.sectorSize >> sectorShift) // 512-byte sectors per logical block
	if r.sector%align != 0 {
		return statusError
	}
	var total uint64
	for _, s := range r.segs[:r.nsegs] {
		if s.first > s.last || s.last >= sectorsPerPage {
			return statusError
		}
		if uint64(s.first)%align != 0 || uint64(s.last+1)%align != 0 {
			return statusError
		}
		total += uint64(s.last-s.first) + 1
	}
	if r.sector > g.sectors || total > g.sectors-r.sector {
		return statusError
	}
	return statusOK
}
