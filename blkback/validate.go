package blkback

import (
	"sync/atomic"

	"blkdom/blkif"
)

// geometry is what requests are validated against: the disk, and what was
// negotiated for it. One geometry is shared by a connection's rings.
type geometry struct {
	sectors     atomic.Uint64 // disk size in 512-byte sectors; grows on resize
	sectorSize  uint32        // logical block size in bytes
	readOnly    bool
	maxSegments int // 11, or the indirect limit when it was offered
	discard     bool
	secure      bool // secure discard offered
}

// validate checks a parsed request against the disk and what was
// negotiated, and returns StatusOK or the status to answer it with at once.
// An indirect request's segments are not known yet at this point:
// loadIndirect checks them once it has copied them.
func (g *geometry) validate(r *blkif.Request) int16 {
	switch r.Op {
	case blkif.OpIndirect:
		if g.maxSegments <= blkif.MaxDirectSegments {
			return blkif.StatusNotSupported // indirect descriptors were not offered
		}
		if r.DataOp != blkif.OpRead && r.DataOp != blkif.OpWrite {
			return blkif.StatusError // as Linux blkback: only reads and writes go indirect
		}
		if r.NSegs == 0 || r.NSegs > g.maxSegments {
			return blkif.StatusError
		}
		return g.checkWrite(r)
	case blkif.OpDiscard:
		return g.checkDiscard(r)
	case blkif.OpRead, blkif.OpWrite:
		if r.NSegs == 0 {
			return blkif.StatusError
		}
	case blkif.OpWriteBarrier, blkif.OpFlushDiskcache:
		if r.NSegs == 0 {
			// A flush alone names no sectors: Linux blkfront sends the
			// block layer's blank position (all ones), and Linux blkback
			// checks the range only of requests that move data.
			return blkif.StatusOK
		}
	default:
		return blkif.StatusNotSupported
	}
	if r.NSegs > blkif.MaxDirectSegments {
		return blkif.StatusError
	}
	if st := g.checkWrite(r); st != blkif.StatusOK {
		return st
	}
	return g.checkSegments(r)
}

// checkWrite refuses anything that changes the disk on a read-only device.
// A flush without data changes nothing and is allowed.
func (g *geometry) checkWrite(r *blkif.Request) int16 {
	if g.readOnly && (r.DataOp == blkif.OpWrite || r.NSegs > 0 && r.DataOp != blkif.OpRead) {
		return blkif.StatusError
	}
	return blkif.StatusOK
}

// checkSegments checks every segment's bounds and alignment to the logical
// block size, and that the whole transfer lies inside the disk.
func (g *geometry) checkSegments(r *blkif.Request) int16 {
	align := uint64(g.sectorSize >> blkif.SectorShift) // 512-byte sectors per logical block
	var total uint64
	for _, s := range r.Segs[:r.NSegs] {
		if s.First > s.Last || s.Last >= blkif.SectorsPerPage {
			return blkif.StatusError
		}
		if uint64(s.First)%align != 0 || uint64(s.Last+1)%align != 0 {
			return blkif.StatusError
		}
		total += uint64(s.Last-s.First) + 1
	}
	return g.checkRange(r.Sector, total)
}

// checkDiscard refuses discards that were not offered, that would change a
// read-only disk (CVE-2013-2140), or that are misaligned or out of range.
func (g *geometry) checkDiscard(r *blkif.Request) int16 {
	switch {
	case !g.discard:
		return blkif.StatusNotSupported
	case g.readOnly:
		return blkif.StatusError
	case r.DiscardFlags&blkif.DiscardSecure != 0 && !g.secure:
		return blkif.StatusNotSupported
	}
	if r.DiscardSectors%uint64(g.sectorSize>>blkif.SectorShift) != 0 {
		return blkif.StatusError
	}
	return g.checkRange(r.Sector, r.DiscardSectors)
}

// checkRange checks that count sectors from sector are aligned to the
// logical block size and inside the disk, without overflow.
func (g *geometry) checkRange(sector, count uint64) int16 {
	if sector%uint64(g.sectorSize>>blkif.SectorShift) != 0 {
		return blkif.StatusError
	}
	size := g.sectors.Load()
	if sector > size || count > size-sector {
		return blkif.StatusError
	}
	return blkif.StatusOK
}
