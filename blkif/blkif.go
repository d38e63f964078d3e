// Package blkif holds the facts of Xen's block I/O protocol that a backend
// and a frontend share: operations, statuses, xenstore states, the two
// x86 request layouts, and the shared ring's index header. It owns the
// wire format only; what to do with a request is blkback's business.
package blkif

import (
	"encoding/binary"
	"fmt"
	"strconv"

	"blkdom/gnttab"
)

// blkif operations (xen/include/public/io/blkif.h).
const (
	OpRead           = 0
	OpWrite          = 1
	OpWriteBarrier   = 2
	OpFlushDiskcache = 3
	OpDiscard        = 5
	OpIndirect       = 6
)

// DiscardSecure is the discard request's flag asking for a secure erase.
const DiscardSecure = 1

// Response statuses.
const (
	StatusOK           = 0
	StatusError        = -1
	StatusNotSupported = -2
)

// XenbusState values, as written in the "state" keys.
const (
	StateUnknown      = 0
	StateInitialising = 1
	StateInitWait     = 2
	StateInitialised  = 3
	StateConnected    = 4
	StateClosing      = 5
	StateClosed       = 6
)

// StateName is a XenbusState's name as xenbus.h spells it ("InitWait"),
// or its number if it has none.
func StateName(s int) string {
	names := [...]string{"Unknown", "Initialising", "InitWait", "Initialised", "Connected", "Closing", "Closed"}
	if s >= 0 && s < len(names) {
		return names[s]
	}
	return strconv.Itoa(s)
}

// Bits of the "info" key.
const (
	InfoCDROM     = 1
	InfoRemovable = 2
	InfoReadOnly  = 4
)

const (
	// SectorShift converts between bytes and the protocol's 512-byte sectors,
	// in which sector numbers and segment bounds are always expressed.
	SectorShift = 9
	// SectorsPerPage bounds a segment's first_sect and last_sect.
	SectorsPerPage = gnttab.PageSize >> SectorShift
	// MaxDirectSegments is BLKIF_MAX_SEGMENTS_PER_REQUEST.
	MaxDirectSegments = 11
	// RingHeaderSize is the shared ring's index header.
	RingHeaderSize = 64
)

// ABI is a frontend's request/response layout. x86_64 ("native" on the
// 64-bit machines blkdom runs on) aligns the 64-bit fields; x86_32 packs
// them. Offsets are checked against Xen's headers in blkif_test.go.
type ABI struct {
	// Name is the value of the frontend's "protocol" key.
	Name string
	// EntrySize is the size of one ring slot: the union of a request and a
	// response, which is the request.
	EntrySize int
	// Offsets inside a read/write request: id, sector, first segment.
	ID, Sector, Seg int
	// DiscardSectors is the offset of a discard request's sector count.
	DiscardSectors int
	// Offsets inside an indirect request: id, sector, indirect page grants.
	IndID, IndSector, IndGrefs int
}

// The two x86 layouts.
var (
	X86_64 = ABI{Name: "x86_64-abi", EntrySize: 112, ID: 8, Sector: 16, Seg: 24,
		DiscardSectors: 24, IndID: 8, IndSector: 16, IndGrefs: 28}
	X86_32 = ABI{Name: "x86_32-abi", EntrySize: 108, ID: 4, Sector: 12, Seg: 20,
		DiscardSectors: 20, IndID: 4, IndSector: 12, IndGrefs: 24}
)

// ABIFor maps the frontend's "protocol" key to a layout. An absent key
// means x86_32: that is what Linux blkback assumes on x86 for a frontend
// too old to write the key, and blkdom follows the backend every existing
// guest was tested against.
func ABIFor(protocol string) (ABI, error) {
	switch protocol {
	case "", X86_32.Name:
		return X86_32, nil
	case X86_64.Name:
		return X86_64, nil
	}
	return ABI{}, fmt.Errorf("unsupported protocol %q", protocol)
}

// RingEntries is how many slots fit in a ring of the given number of
// pages: rounded down to a power of two, as the frontend's macros do.
func (a ABI) RingEntries(pages int) uint32 {
	n := uint32((pages*gnttab.PageSize - RingHeaderSize) / a.EntrySize)
	p := uint32(1)
	for p*2 <= n {
		p *= 2
	}
	return p
}

// Segment is one piece of a request: sectors First..Last of the granted
// frame Ref.
type Segment struct {
	Ref         gnttab.Ref
	First, Last uint8
}

// Request is one decoded ring request. A backend decodes each request
// exactly once from a private copy of its slot (XSA-155: the frontend may
// rewrite the slot at any time), then validates the copy, then uses it.
type Request struct {
	Op uint8 // the operation as written
	// DataOp is what to do: Op, or an indirect request's inner operation.
	// Responses carry it: Linux blkfront checks that an indirect request's
	// response names the inner operation.
	DataOp uint8
	ID     uint64
	Sector uint64
	NSegs  int
	// Indirect is the number of indirect-segment pages, 0 for a direct request.
	Indirect int
	// DiscardSectors is a discard request's length; DiscardFlags its flag
	// byte (DiscardSecure).
	DiscardSectors uint64
	DiscardFlags   uint8
	// Segs receives a direct request's segments; its length bounds how
	// many are decoded.
	Segs []Segment
	// IndirectRefs are the grants of the indirect-segment pages.
	IndirectRefs [MaxIndirectPages]gnttab.Ref
}

// MaxIndirectPages is BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST.
const MaxIndirectPages = 8

// SegmentsPerIndirectPage is how many 8-byte segments one indirect page holds.
const SegmentsPerIndirectPage = gnttab.PageSize / 8

// Parse decodes one request from slot, which must be a private copy of the
// ring slot: Parse never touches shared memory.
func (a ABI) Parse(slot []byte, r *Request) {
	le := binary.LittleEndian
	r.Op = slot[0]
	r.DataOp = r.Op
	r.Indirect = 0
	r.DiscardSectors = 0
	r.DiscardFlags = 0
	switch r.Op {
	case OpIndirect:
		r.DataOp = slot[1]
		r.NSegs = int(le.Uint16(slot[2:]))
		r.ID = le.Uint64(slot[a.IndID:])
		r.Sector = le.Uint64(slot[a.IndSector:])
		r.Indirect = (r.NSegs + SegmentsPerIndirectPage - 1) / SegmentsPerIndirectPage
		for i := range r.IndirectRefs {
			r.IndirectRefs[i] = gnttab.Ref(le.Uint32(slot[a.IndGrefs+4*i:]))
		}
	case OpDiscard:
		r.NSegs = 0
		r.DiscardFlags = slot[1]
		r.ID = le.Uint64(slot[a.ID:])
		r.Sector = le.Uint64(slot[a.Sector:])
		r.DiscardSectors = le.Uint64(slot[a.DiscardSectors:])
	default:
		r.NSegs = int(slot[1])
		r.ID = le.Uint64(slot[a.ID:])
		r.Sector = le.Uint64(slot[a.Sector:])
		n := min(r.NSegs, MaxDirectSegments, len(r.Segs))
		for i := 0; i < n; i++ {
			ParseSegment(slot[a.Seg+8*i:], &r.Segs[i])
		}
	}
}

// ParseSegment decodes one blkif_request_segment: gref u32, first_sect u8,
// last_sect u8, two bytes of padding. Indirect pages are arrays of them.
func ParseSegment(b []byte, s *Segment) {
	s.Ref = gnttab.Ref(binary.LittleEndian.Uint32(b))
	s.First = b[4]
	s.Last = b[5]
}

// PutRequest encodes a direct read/write/flush/barrier request into slot,
// for a frontend. Segments beyond MaxDirectSegments are not encoded.
func (a ABI) PutRequest(slot []byte, op uint8, id, sector uint64, segs []Segment) {
	le := binary.LittleEndian
	clear(slot[:a.EntrySize])
	slot[0] = op
	slot[1] = uint8(len(segs))
	le.PutUint64(slot[a.ID:], id)
	le.PutUint64(slot[a.Sector:], sector)
	for i, s := range segs[:min(len(segs), MaxDirectSegments)] {
		PutSegment(slot[a.Seg+8*i:], s)
	}
}

// PutSegment encodes one segment descriptor, in a request or an indirect
// page.
func PutSegment(b []byte, s Segment) {
	binary.LittleEndian.PutUint32(b, uint32(s.Ref))
	b[4], b[5], b[6], b[7] = s.First, s.Last, 0, 0
}

// PutIndirect encodes an indirect request whose nsegs segment descriptors
// are in the pages granted as pages, for a frontend.
func (a ABI) PutIndirect(slot []byte, dataOp uint8, id, sector uint64, nsegs int, pages []gnttab.Ref) {
	le := binary.LittleEndian
	clear(slot[:a.EntrySize])
	slot[0], slot[1] = OpIndirect, dataOp
	le.PutUint16(slot[2:], uint16(nsegs))
	le.PutUint64(slot[a.IndID:], id)
	le.PutUint64(slot[a.IndSector:], sector)
	for i, r := range pages[:min(len(pages), MaxIndirectPages)] {
		le.PutUint32(slot[a.IndGrefs+4*i:], uint32(r))
	}
}

// PutDiscard encodes a discard of count sectors from sector (flags:
// DiscardSecure or 0), for a frontend.
func (a ABI) PutDiscard(slot []byte, id, sector, count uint64, flags uint8) {
	le := binary.LittleEndian
	clear(slot[:a.EntrySize])
	slot[0], slot[1] = OpDiscard, flags
	le.PutUint64(slot[a.ID:], id)
	le.PutUint64(slot[a.Sector:], sector)
	le.PutUint64(slot[a.DiscardSectors:], count)
}

// WriteResponse fills the response fields of a ring slot one by one in the
// frontend's layout (XSA-216: never copy a struct with uninitialised
// padding into guest memory). The layouts agree on the offsets; only the
// slot size differs.
func WriteResponse(slot []byte, id uint64, op uint8, status int16) {
	le := binary.LittleEndian
	le.PutUint64(slot[0:], id)
	slot[8] = op
	le.PutUint16(slot[10:], uint16(status))
}

// ParseResponse decodes a response, for a frontend.
func ParseResponse(slot []byte) (id uint64, op uint8, status int16) {
	le := binary.LittleEndian
	return le.Uint64(slot[0:]), slot[8], int16(le.Uint16(slot[10:]))
}
