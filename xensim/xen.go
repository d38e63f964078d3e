// Package xensim simulates the parts of a Xen hypervisor a block backend
// uses, so that tests and `blkdom demo` run the real backend against a
// frontend in the same process, with no Xen.
//
// Each simulated domain's memory is one memfd. A frontend allocates pages
// of it (AllocPages), grants them (Grant), and allocates event channels
// (OpenEvents, BindUnboundPort). A backend opens Grants and Events handles
// on its own domain: Grants.Map maps the granted frames of the frontend's
// memfd into the backend's address space, so backend I/O lands in the
// frontend's pages exactly as through Linux's gntdev (zero-copy); Events
// follows /dev/xen/evtchn's masking rules.
//
// xensim owns grant tables, guest memory and event channels. It does not
// own xenstore (package xensim/xenstored) nor toolstack steps.
//
// One mutex in Xen guards all state; the simulation is meant to be
// simple and obviously right, not to scale.
package xensim

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"blkdom/gnttab"

	"golang.org/x/sys/unix"
)

// Xen is one simulated hypervisor: a set of domains.
type Xen struct {
	mu      sync.Mutex
	closed  bool
	domains map[uint32]*Domain
}

// New returns a hypervisor with no domains.
func New() (*Xen, error) {
	return &Xen{domains: make(map[uint32]*Domain)}, nil
}

// Close closes every handle, unmaps every page and frees all guest memory.
// Page.Mem slices must not be used afterwards.
func (x *Xen) Close() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return fmt.Errorf("xensim: close: %w", os.ErrClosed)
	}
	x.closed = true
	var errs []error
	for _, d := range x.domains {
		for len(d.grantHandles) > 0 {
			errs = append(errs, d.grantHandles[0].closeLocked())
		}
		for len(d.eventHandles) > 0 {
			d.eventHandles[0].closeLocked()
		}
		for i := range d.frames {
			if f := &d.frames[i]; f.mem != nil {
				errs = append(errs, unmap(f.mem))
				f.mem = nil
			}
		}
		if d.memfd >= 0 {
			errs = append(errs, unix.Close(d.memfd))
			d.memfd = -1
		}
	}
	return errors.Join(errs...)
}

// Domain returns domain id, creating it on first use.
func (x *Xen) Domain(id uint32) *Domain {
	x.mu.Lock()
	defer x.mu.Unlock()
	d := x.domains[id]
	if d == nil {
		d = &Domain{x: x, id: id, memfd: -1}
		x.domains[id] = d
	}
	return d
}

// Domain is one simulated guest: its memory, grant table and event
// channel ports.
type Domain struct {
	x  *Xen
	id uint32

	memfd      int     // guest memory, created by the first AllocPages
	frames     []frame // indexed by frame number
	freeFrames []uint64

	grants   []grant // indexed by grant reference
	freeRefs []gnttab.Ref

	ports []port // indexed by port number; port 0 is never used

	grantHandles []*Grants
	eventHandles []*Events
}

// ID returns the domain id.
func (d *Domain) ID() uint32 { return d.id }

type frame struct {
	mem     []byte // the owner's own mapping; nil while the frame is free
	granted int    // live grant entries naming this frame
}

type grant struct {
	inUse    bool
	to       uint32
	frame    uint64
	readOnly bool
	maps     int // mappings by the grantee right now
}

// reservedRefs mirrors Linux's GNTTAB_NR_RESERVED_ENTRIES: grant
// references below it are never handed out, so 0 is always invalid.
const reservedRefs = 8

// Page is one page of a domain's memory, mapped into this process.
type Page struct {
	Mem   []byte // gnttab.PageSize bytes
	Frame uint64 // frame number, what Grant takes
}

// AllocPages allocates n zeroed pages of guest memory.
func (d *Domain) AllocPages(n int) ([]Page, error) {
	if n <= 0 {
		return nil, fmt.Errorf("xensim: allocate %d pages: %w", n, unix.EINVAL)
	}
	d.x.mu.Lock()
	defer d.x.mu.Unlock()
	if d.x.closed {
		return nil, fmt.Errorf("xensim: allocate pages: %w", os.ErrClosed)
	}
	if d.memfd < 0 {
		fd, err := unix.MemfdCreate(fmt.Sprintf("xensim-dom%d", d.id), unix.MFD_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("xensim: guest memory of domain %d: %w", d.id, err)
		}
		d.memfd = fd
	}
	if grow := n - len(d.freeFrames); grow > 0 {
		size := int64(len(d.frames)+grow) * gnttab.PageSize
		if err := unix.Ftruncate(d.memfd, size); err != nil {
			return nil, fmt.Errorf("xensim: grow guest memory of domain %d: %w", d.id, err)
		}
		for i := range grow {
			d.freeFrames = append(d.freeFrames, uint64(len(d.frames)+i))
		}
		d.frames = append(d.frames, make([]frame, grow)...)
	}
	pages := make([]Page, 0, n)
	for range n {
		fn := d.freeFrames[len(d.freeFrames)-1]
		mem, err := mapPage(d.memfd, fn)
		if err != nil {
			d.freeLocked(pages)
			return nil, fmt.Errorf("xensim: map guest page: %w", err)
		}
		d.freeFrames = d.freeFrames[:len(d.freeFrames)-1]
		d.frames[fn].mem = mem
		pages = append(pages, Page{Mem: mem, Frame: fn})
	}
	return pages, nil
}

// FreePages returns pages to the domain. A page still granted is refused
// with EBUSY (end its grants first), as is one that is not allocated;
// pages before the refused one are freed. Freed pages read as zero when
// allocated again.
func (d *Domain) FreePages(pages []Page) error {
	d.x.mu.Lock()
	defer d.x.mu.Unlock()
	for i, p := range pages {
		if p.Frame >= uint64(len(d.frames)) || d.frames[p.Frame].mem == nil ||
			len(p.Mem) == 0 || &p.Mem[0] != &d.frames[p.Frame].mem[0] {
			return fmt.Errorf("xensim: free page %d: frame %d not allocated: %w", i, p.Frame, unix.EINVAL)
		}
		if d.frames[p.Frame].granted > 0 {
			return fmt.Errorf("xensim: free page %d: frame %d still granted: %w", i, p.Frame, unix.EBUSY)
		}
		if err := d.freeLocked(pages[i : i+1]); err != nil {
			return err
		}
	}
	return nil
}

// freeLocked unmaps pages and releases their frames' memory.
func (d *Domain) freeLocked(pages []Page) error {
	for _, p := range pages {
		if err := unmap(d.frames[p.Frame].mem); err != nil {
			return fmt.Errorf("xensim: unmap guest page: %w", err)
		}
		d.frames[p.Frame].mem = nil
		d.freeFrames = append(d.freeFrames, p.Frame)
		err := unix.Fallocate(d.memfd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE,
			int64(p.Frame)*gnttab.PageSize, gnttab.PageSize)
		if err != nil {
			return fmt.Errorf("xensim: release guest frame %d: %w", p.Frame, err)
		}
	}
	return nil
}

// Grant lets domain to map frame (one of d's allocated pages), read-only
// if readOnly.
func (d *Domain) Grant(to uint32, frame uint64, readOnly bool) (gnttab.Ref, error) {
	d.x.mu.Lock()
	defer d.x.mu.Unlock()
	if frame >= uint64(len(d.frames)) || d.frames[frame].mem == nil {
		return 0, fmt.Errorf("xensim: grant frame %d of domain %d: not allocated: %w", frame, d.id, unix.EINVAL)
	}
	var ref gnttab.Ref
	if n := len(d.freeRefs); n > 0 {
		ref = d.freeRefs[n-1]
		d.freeRefs = d.freeRefs[:n-1]
	} else {
		if len(d.grants) == 0 {
			d.grants = make([]grant, reservedRefs)
		}
		ref = gnttab.Ref(len(d.grants))
		d.grants = append(d.grants, grant{})
	}
	d.grants[ref] = grant{inUse: true, to: to, frame: frame, readOnly: readOnly}
	d.frames[frame].granted++
	return ref, nil
}

// EndGrant revokes a grant. Like gnttab_end_foreign_access, it fails with
// EBUSY while the grantee still has the page mapped.
func (d *Domain) EndGrant(ref gnttab.Ref) error {
	d.x.mu.Lock()
	defer d.x.mu.Unlock()
	g := d.grant(ref)
	if g == nil {
		return fmt.Errorf("xensim: end grant %d of domain %d: %w", ref, d.id, unix.EINVAL)
	}
	if g.maps > 0 {
		return fmt.Errorf("xensim: end grant %d of domain %d: mapped %d times: %w", ref, d.id, g.maps, unix.EBUSY)
	}
	d.frames[g.frame].granted--
	*g = grant{}
	d.freeRefs = append(d.freeRefs, ref)
	return nil
}

// GrantMapCount reports how many mappings of ref exist now (0 for a ref
// that is not granted). For tests: after a backend is done, every grant
// should be unmapped.
func (d *Domain) GrantMapCount(ref gnttab.Ref) int {
	d.x.mu.Lock()
	defer d.x.mu.Unlock()
	if g := d.grant(ref); g != nil {
		return g.maps
	}
	return 0
}

// grant returns the live grant entry ref, or nil.
func (d *Domain) grant(ref gnttab.Ref) *grant {
	if uint64(ref) >= uint64(len(d.grants)) || !d.grants[ref].inUse {
		return nil
	}
	return &d.grants[ref]
}

// grantFor returns the live entry ref of domain dom if it grants access to
// domain to (writable access when writable), or the status saying why not.
// Callers hold x.mu.
func (x *Xen) grantFor(dom uint32, ref gnttab.Ref, to uint32, writable bool) (*Domain, *grant, gnttab.Status) {
	d := x.domains[dom]
	if d == nil {
		return nil, nil, gnttab.StatusBadDomain
	}
	g := d.grant(ref)
	if g == nil || g.to != to {
		return nil, nil, gnttab.StatusBadRef
	}
	if writable && g.readOnly {
		return nil, nil, gnttab.StatusPermissionDenied
	}
	return d, g, gnttab.StatusOK
}
