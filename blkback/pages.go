package blkback

import (
	"errors"

	"golang.org/x/sys/unix"

	"blkdom/blkif"
	"blkdom/gnttab"
)

// cachePolicy is how a disk's data travels between the image and the
// guest's pages. README.md ("Cache policy") gives the reasoning.
type cachePolicy uint8

const (
	// policyDirect: O_DIRECT between the image and the mapped grants;
	// zero-copy, no page cache.
	policyDirect cachePolicy = iota
	// policyBuffered: the page cache, copied by the kernel straight into
	// the mapped grants. The image is open only while connected, so no
	// cached data outlives a connection.
	policyBuffered
	// policyGrantCopy: O_DIRECT into blkdom's own buffers, grant-copied to
	// and from the guest: no guest page is ever handed to the storage
	// stack.
	policyGrantCopy
)

func (p cachePolicy) String() string { return string(policyNames[p]) }

// scratch is one slot's preallocated room for its request's pages, so the
// data path allocates nothing.
type scratch struct {
	pages   [][]byte // each segment's page: a mapped grant or a bounce page
	cached  []bool   // the segment's page is a persistent grant
	iov     []unix.Iovec
	refs    []gnttab.Ref   // the grants mapped as one batch for this request
	batch   []int          // the segment each batched grant belongs to
	mapping gnttab.Mapping // that batch's mapping, if any
	copies  []gnttab.CopySegment
	told    []gnttab.Ref // the request's grants, as told to the probes
	// indirect holds an indirect request's descriptor pages from the
	// persistent-grant cache while its segments are copied out.
	indirect [blkif.MaxIndirectPages][]byte
	bounce   []byte // grant-copy mode: one page of our own per segment
}

func newScratch(maxSegs int, bounce bool) *scratch {
	w := &scratch{
		pages:  make([][]byte, maxSegs),
		cached: make([]bool, maxSegs),
		iov:    make([]unix.Iovec, maxSegs),
		refs:   make([]gnttab.Ref, 0, maxSegs),
		batch:  make([]int, 0, maxSegs),
		told:   make([]gnttab.Ref, 0, maxSegs),
	}
	if bounce {
		w.copies = make([]gnttab.CopySegment, maxSegs)
		w.bounce = alignedPages(maxSegs)
	}
	return w
}

// acquirePages makes every segment's page reachable in w.pages: persistent
// grants from the ring's cache (mapping and caching new ones while there
// is room), the rest mapped as one batch, read-only when the backend only
// reads them; in grant-copy mode our own pages, filled from the guest's
// for a write.
func (r *ring) acquirePages(w *scratch, req *blkif.Request, write bool) error {
	n := req.NSegs
	if r.policy == policyGrantCopy {
		for i := range n {
			w.pages[i] = w.bounce[i*gnttab.PageSize : (i+1)*gnttab.PageSize]
		}
		if write {
			return r.copyGrants(w, req, false)
		}
		return nil
	}
	w.refs, w.batch = w.refs[:0], w.batch[:0]
	if c := r.cache; c != nil {
		for i := range n {
			w.pages[i], c.segEnt[i], w.cached[i] = c.acquire(r.grants, r.dom, req.Segs[i].Ref)
		}
		c.mapAlts(r.grants, r.dom, c.segEnt[:n])
		for i := range n {
			c.segAlt[i] = nil
			if w.cached[i] {
				c.segAlt[i] = c.ents[c.segEnt[i]].alt
			}
		}
	}
	for i := range n {
		if r.cache == nil || !w.cached[i] {
			w.refs = append(w.refs, req.Segs[i].Ref)
			w.batch = append(w.batch, i)
		}
	}
	if len(w.refs) == 0 {
		return nil
	}
	m, err := r.grants.Map(r.dom, w.refs, !write)
	if err != nil {
		r.putCached(w, req)
		return err
	}
	r.stats.grantMaps.Add(uint64(len(w.refs)))
	w.mapping = m
	for j, i := range w.batch {
		w.pages[i] = m.Mem[j*gnttab.PageSize : (j+1)*gnttab.PageSize]
	}
	return nil
}

// iovecs returns the iovecs of req's transfer, in w.iov. Segments are
// consecutive on the disk; those whose bytes are also consecutive in our
// memory go in one iovec, as the kernel pins each iovec of an O_DIRECT
// transfer in a pass of its own (about 3 µs a pass in a PV domain,
// BenchmarkXenDirectRead). If the persistent grants' second mappings
// (acquirePages left them in the cache's segAlt) make fewer iovecs, those
// are used.
func (r *ring) iovecs(w *scratch, req *blkif.Request) []unix.Iovec {
	iov := fillIovecs(w.iov, req, w.pages)
	c := r.cache
	if len(iov) == 1 || c == nil || r.policy == policyGrantCopy {
		return iov
	}
	for i := range req.NSegs {
		if c.segAlt[i] == nil {
			return iov
		}
	}
	if alt := fillIovecs(c.altIov, req, c.segAlt); len(alt) < len(iov) {
		return w.iov[:copy(w.iov, alt)]
	}
	return iov
}

// fillIovecs fills iov with the segments' bytes in pages, merging those
// that follow each other in memory, and returns the part it filled.
func fillIovecs(iov []unix.Iovec, req *blkif.Request, pages [][]byte) []unix.Iovec {
	n := 0
	for i := range req.NSegs {
		seg := req.Segs[i]
		base := &pages[i][int(seg.First)<<blkif.SectorShift]
		size := int(seg.Last-seg.First+1) << blkif.SectorShift
		if n > 0 && ends(iov[n-1], base) {
			iov[n-1].Len += uint64(size)
			continue
		}
		iov[n].Base = base
		iov[n].SetLen(size)
		n++
	}
	return iov[:n]
}

// releasePages lets a request's pages go: the batch unmapped, the persistent
// grants back to the cache; in grant-copy mode a successful read's data
// copied to the guest.
func (r *ring) releasePages(w *scratch, req *blkif.Request, write, ok bool) error {
	if r.policy == policyGrantCopy {
		if !write && ok {
			return r.copyGrants(w, req, true)
		}
		return nil
	}
	var err error
	if w.mapping.Mem != nil {
		err = r.grants.Unmap(w.mapping)
		w.mapping = gnttab.Mapping{}
	}
	r.putCached(w, req)
	return err
}

func (r *ring) putCached(w *scratch, req *blkif.Request) {
	if r.cache == nil {
		return
	}
	for i := range req.NSegs {
		if w.cached[i] {
			r.cache.put(req.Segs[i].Ref)
			w.cached[i] = false
		}
	}
}

// loadIndirect copies an indirect request's segments out of its indirect
// pages, once, into the request's private copy, and validates them. With
// persistent grants the indirect pages come from the cache like data
// pages (Linux blkfront grants them from the same persistent pool);
// otherwise they are mapped read-only for the copy.
func (r *ring) loadIndirect(w *scratch, req *blkif.Request) int16 {
	refs := req.IndirectRefs[:req.Indirect]
	var m gnttab.Mapping
	cached := r.cache != nil
	if cached {
		for i, ref := range refs {
			w.indirect[i], _, w.cached[i] = r.cache.acquire(r.grants, r.dom, ref)
			cached = cached && w.cached[i]
		}
		if !cached {
			r.putIndirect(w, refs)
		}
	}
	if !cached {
		var err error
		if m, err = r.grants.Map(r.dom, refs, false); err != nil {
			return blkif.StatusError
		}
		r.stats.grantMaps.Add(uint64(len(refs)))
	}
	const perPage = gnttab.PageSize / 8 // segment descriptors in a page
	for i := range req.NSegs {
		var b []byte
		if cached {
			b = w.indirect[i/perPage][8*(i%perPage):]
		} else {
			b = m.Mem[8*i:]
		}
		blkif.ParseSegment(b, &req.Segs[i])
	}
	if cached {
		r.putIndirect(w, refs)
	} else if r.grants.Unmap(m) != nil {
		return blkif.StatusError
	}
	return r.geo.checkSegments(req)
}

// putIndirect gives back the indirect pages loadIndirect took from the
// cache.
func (r *ring) putIndirect(w *scratch, refs []gnttab.Ref) {
	for i, ref := range refs {
		if w.cached[i] {
			r.cache.put(ref)
			w.cached[i] = false
		}
	}
}

// errGrantCopy reports a grant copy the hypervisor refused.
var errGrantCopy = errors.New("grant copy failed")

// copyGrants copies each segment between the guest's granted page and our
// bounce page: to the guest after a read, from it before a write.
func (r *ring) copyGrants(w *scratch, req *blkif.Request, toGuest bool) error {
	for i := range req.NSegs {
		seg := req.Segs[i]
		off := int(seg.First) << blkif.SectorShift
		end := int(seg.Last+1) << blkif.SectorShift
		w.copies[i] = gnttab.CopySegment{Dom: r.dom, Ref: seg.Ref, Offset: uint16(off),
			Local: w.bounce[i*gnttab.PageSize+off : i*gnttab.PageSize+end], ToGrant: toGuest}
	}
	if r.grants.Copy(w.copies[:req.NSegs]) != nil {
		return errGrantCopy
	}
	return nil
}
