package xensim

import (
	"errors"
	"fmt"
	"os"

	"blkdom/gnttab"

	"golang.org/x/sys/unix"
)

// Grants maps other domains' grants into this process on behalf of one
// domain: the simulated /dev/xen/gntdev. It has gnttab.Device's methods.
// Map and Unmap allocate nothing once the handle has seen its largest
// number of simultaneous mappings.
type Grants struct {
	x      *Xen
	dom    *Domain // the mapping domain
	closed bool
	maps   []mapping // indexed by Mapping.Index
	free   []int     // unused indexes of maps
}

// mapping is one live Map: what Unmap must undo.
type mapping struct {
	inUse   bool
	granter *Domain
	refs    []gnttab.Ref
	mem     []byte
}

// OpenGrants opens a grant-mapping handle for domain d (the backend).
func (d *Domain) OpenGrants() (*Grants, error) {
	d.x.mu.Lock()
	defer d.x.mu.Unlock()
	if d.x.closed {
		return nil, fmt.Errorf("xensim: open grants: %w", os.ErrClosed)
	}
	g := &Grants{x: d.x, dom: d}
	d.grantHandles = append(d.grantHandles, g)
	return g, nil
}

// statusErrno is the errno a failed map reports for a grant status.
func statusErrno(st gnttab.Status) error {
	if st == gnttab.StatusPermissionDenied {
		return unix.EPERM
	}
	return unix.EINVAL
}

// Map maps refs, all granted by dom to this handle's domain, into one
// contiguous range of this process, writable only if writable. Every ref
// is checked before anything is mapped: a ref that is not granted, or
// granted to another domain, fails with an error wrapping EINVAL, a
// read-only grant mapped writable with EPERM (both also wrap the
// gnttab.Status), and nothing stays mapped.
func (g *Grants) Map(dom uint32, refs []gnttab.Ref, writable bool) (gnttab.Mapping, error) {
	n := len(refs)
	if n == 0 || n > gnttab.MaxBatch {
		return gnttab.Mapping{}, fmt.Errorf("xensim: map %d grants (1..%d): %w", n, gnttab.MaxBatch, unix.EINVAL)
	}
	g.x.mu.Lock()
	defer g.x.mu.Unlock()
	if g.closed {
		return gnttab.Mapping{}, fmt.Errorf("xensim: map: %w", os.ErrClosed)
	}
	var granter *Domain
	for i, r := range refs {
		d, _, st := g.x.grantFor(dom, r, g.dom.id, writable)
		if st != gnttab.StatusOK {
			return gnttab.Mapping{}, fmt.Errorf("xensim: map ref %d (#%d) of domain %d: %w: %w", r, i, dom, st, statusErrno(st))
		}
		granter = d
	}
	mem, err := reserve(n)
	if err != nil {
		return gnttab.Mapping{}, fmt.Errorf("xensim: map %d grants: %w", n, err)
	}
	for i, r := range refs {
		if err := mapFrameAt(mem[i*gnttab.PageSize:], granter.memfd, granter.grants[r].frame, writable); err != nil {
			return gnttab.Mapping{}, errors.Join(fmt.Errorf("xensim: map ref %d of domain %d: %w", r, dom, err), unmap(mem))
		}
	}
	for _, r := range refs {
		granter.grants[r].maps++
	}
	var idx int
	if k := len(g.free); k > 0 {
		idx = g.free[k-1]
		g.free = g.free[:k-1]
	} else {
		idx = len(g.maps)
		g.maps = append(g.maps, mapping{})
	}
	m := &g.maps[idx]
	m.inUse, m.granter, m.mem = true, granter, mem
	m.refs = append(m.refs[:0], refs...)
	return gnttab.Mapping{Mem: mem, Index: uint64(idx)}, nil
}

// Unmap unmaps a mapping returned by Map on this handle. Anything else
// fails with EINVAL and changes nothing.
func (g *Grants) Unmap(m gnttab.Mapping) error {
	g.x.mu.Lock()
	defer g.x.mu.Unlock()
	if g.closed {
		return fmt.Errorf("xensim: unmap: %w", os.ErrClosed)
	}
	if m.Index >= uint64(len(g.maps)) {
		return fmt.Errorf("xensim: unmap index %d: %w", m.Index, unix.EINVAL)
	}
	rec := &g.maps[m.Index]
	if !rec.inUse || len(m.Mem) != len(rec.mem) || &m.Mem[0] != &rec.mem[0] {
		return fmt.Errorf("xensim: unmap index %d: not this mapping: %w", m.Index, unix.EINVAL)
	}
	if err := g.unmapLocked(rec); err != nil {
		return err
	}
	g.free = append(g.free, int(m.Index))
	return nil
}

func (g *Grants) unmapLocked(rec *mapping) error {
	if err := unmap(rec.mem); err != nil {
		return fmt.Errorf("xensim: unmap: %w", err)
	}
	for _, r := range rec.refs {
		rec.granter.grants[r].maps--
	}
	rec.inUse, rec.granter, rec.mem = false, nil, nil
	return nil
}

// Copy copies between granted pages and local buffers, like the
// GRANT_COPY ioctl: each segment needs a grant from seg.Dom to this
// handle's domain, writable if seg.ToGrant. It sets every segment's Status
// and returns a *gnttab.CopyError if any failed.
func (g *Grants) Copy(segs []gnttab.CopySegment) error {
	g.x.mu.Lock()
	defer g.x.mu.Unlock()
	if g.closed {
		return fmt.Errorf("xensim: copy: %w", os.ErrClosed)
	}
	for i := range segs {
		s := &segs[i]
		if s.Status = s.Check(); s.Status != gnttab.StatusOK {
			continue
		}
		granter, gr, st := g.x.grantFor(s.Dom, s.Ref, g.dom.id, s.ToGrant)
		if s.Status = st; st != gnttab.StatusOK {
			continue
		}
		page := granter.frames[gr.frame].mem[s.Offset : int(s.Offset)+len(s.Local)]
		if s.ToGrant {
			copy(page, s.Local)
		} else {
			copy(s.Local, page)
		}
	}
	return gnttab.CopyResult(segs)
}

// Close unmaps every mapping still held by the handle.
func (g *Grants) Close() error {
	g.x.mu.Lock()
	defer g.x.mu.Unlock()
	if g.closed {
		return fmt.Errorf("xensim: close grants: %w", os.ErrClosed)
	}
	return g.closeLocked()
}

func (g *Grants) closeLocked() error {
	var errs []error
	for i := range g.maps {
		if g.maps[i].inUse {
			errs = append(errs, g.unmapLocked(&g.maps[i]))
		}
	}
	g.closed = true
	g.dom.grantHandles = removeHandle(g.dom.grantHandles, g)
	return errors.Join(errs...)
}

func removeHandle[H comparable](hs []H, h H) []H {
	for i := range hs {
		if hs[i] == h {
			return append(hs[:i], hs[i+1:]...)
		}
	}
	return hs
}
