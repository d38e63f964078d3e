package blkback

import "blkdom/blkif"

// validate checks a parsed request against the disk and what was
// negotiated, and returns blkif.StatusOK or the status to answer it with at once.
// Indirect segments are not known yet at this point; execute validates
// them once they have been copied out of their pages.
func (g *geometry) validate(r *blkif.Request) int16 {
	if r.Op == blkif.OpIndirect && g.maxSegments <= blkif.MaxDirectSegments {
		return blkif.StatusNotSupported // indirect descriptors were not offered
	}
	switch r.DataOp {
	case blkif.OpRead, blkif.OpWrite:
		if r.NSegs == 0 {
			return blkif.StatusError
		}
	case blkif.OpWriteBarrier, blkif.OpFlushDiskcache:
		if r.Indirect > 0 {
			return blkif.StatusError // Linux blkfront never sends these indirect
		}
	default:
		return blkif.StatusNotSupported
	}
	if r.Op == blkif.OpIndirect {
		if r.NSegs > g.maxSegments {
			return blkif.StatusError
		}
		return g.checkWrite(r)
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
	if r.Sector%align != 0 {
		return blkif.StatusError
	}
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
	if r.Sector > g.sectors || total > g.sectors-r.Sector {
		return blkif.StatusError
	}
	return blkif.StatusOK
}
