// Package blkfront is a reference blkif frontend for the simulated Xen.
// At the protocol level it behaves like Linux's xen-blkfront: it grants
// its rings and data pages to the backend, publishes ring-ref(s),
// event-channel(s) and protocol, negotiates multi-page rings, queues,
// persistent grants and indirect descriptors, walks the xenbus states,
// and keeps many requests in flight. Tests and the demo drive blkback
// with it; its raw access to the ring lets tests play a hostile frontend.
//
// blkfront owns the guest side of one device. It does not own the
// toolstack's part (creating the xenstore directories: xensim.AddDisk).
package blkfront

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"blkdom/blkif"
	"blkdom/gnttab"
	"blkdom/xensim"
	"blkdom/xs"
)

// Options tune a Frontend. The zero value is a plain single-page,
// single-queue frontend without persistent grants or indirect requests.
type Options struct {
	// Protocol is written to the "protocol" key; default x86_64-abi.
	Protocol string
	// OmitProtocol leaves the "protocol" key out, as old frontends do.
	OmitProtocol bool
	// Timeout bounds each handshake step and each request (default 10s).
	Timeout time.Duration
	// RequestTimeout, if set, bounds each request instead of Timeout.
	RequestTimeout time.Duration
	// Queues asks for this many rings (multi-queue), if the backend offers
	// as many.
	Queues int
	// RingPageOrder asks for rings of 2^order pages, if offered.
	RingPageOrder int
	// Persistent asks for persistent grants: data pages are granted once
	// and stay granted until the frontend closes.
	Persistent bool
	// IndirectSegments is the most segments the frontend puts in one
	// indirect request (capped by what the backend offers); 0: none.
	IndirectSegments int
}

// Disk is what the backend published, and what was negotiated.
type Disk struct {
	Sectors            uint64 // in 512-byte units
	SectorSize         uint32
	PhysicalSectorSize uint32
	Info               int
	FlushCache         bool
	Barrier            bool
	Discard            bool
	DiscardGranularity uint32
	// Negotiated.
	Queues      int
	RingPages   int
	Persistent  bool
	MaxSegments int // per request: 11, or the indirect limit
}

// Frontend is one vbd as a guest sees it.
type Frontend struct {
	xs     *xs.Client // the guest's own xenstore connection
	dom    *xensim.Domain
	path   string // device/vbd/<devid>
	bePath string
	beDom  uint32
	opts   Options
	abi    blkif.ABI
	Disk   Disk

	rings []*fring
	next  atomic.Uint32 // round-robin choice of ring
	stray atomic.Uint64 // see Stray
}

// ErrNoResponse is returned when the backend does not answer a request
// within the frontend's timeout.
var ErrNoResponse = errors.New("blkfront: no response from the backend")

// New returns the frontend of device devid of the guest dom, which talks
// to xenstore through c (a connection made as that guest).
func New(c *xs.Client, dom *xensim.Domain, devid int, opts Options) *Frontend {
	if opts.Protocol == "" {
		opts.Protocol = blkif.X86_64.Name
	}
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = opts.Timeout
	}
	opts.Queues = max(opts.Queues, 1)
	return &Frontend{xs: c, dom: dom, opts: opts,
		path: fmt.Sprintf("/local/domain/%d/device/vbd/%d", dom.ID(), devid)}
}

// Connect performs the handshake: wait for the backend's InitWait, read
// what it offers, set up and publish the rings, go Initialised, wait for
// Connected, read the disk, go Connected.
func (f *Frontend) Connect(ctx context.Context) error {
	var err error
	if f.bePath, err = f.xs.Read(f.path + "/backend"); err != nil {
		return err
	}
	beID, err := f.readUint(f.path + "/backend-id")
	if err != nil {
		return err
	}
	f.beDom = uint32(beID)
	if _, err := f.waitBackend(ctx, blkif.StateInitWait, blkif.StateInitWait); err != nil {
		return err
	}
	if f.abi, err = blkif.ABIFor(f.opts.Protocol); err != nil {
		return err
	}
	f.negotiate()
	keys, err := f.setupRings()
	if err != nil {
		f.teardown()
		return err
	}
	err = f.xs.Transaction(func(tx *xs.Tx) error {
		for _, kv := range keys {
			if err := tx.Write(f.path+"/"+kv[0], kv[1]); err != nil {
				return err
			}
		}
		return tx.Write(f.path+"/state", strconv.Itoa(blkif.StateInitialised))
	})
	if err != nil {
		f.teardown()
		return err
	}
	if _, err := f.waitBackend(ctx, blkif.StateConnected, blkif.StateConnected); err != nil {
		f.teardown()
		return err
	}
	if err := f.readDisk(); err != nil {
		f.teardown()
		return err
	}
	return f.setState(blkif.StateConnected)
}

// offer reads a number the backend offers; absent, it is the protocol's
// default, def.
func (f *Frontend) offer(key string, def int) int {
	v, err := f.readUint(f.bePath + "/" + key)
	if err != nil {
		return def
	}
	return int(v)
}

// negotiate settles the rings from what the backend offers by InitWait.
// Persistent grants and indirect segments are settled at Connected
// (negotiateRequests), where Linux's blkfront reads them too: a backend
// publishes them by then.
func (f *Frontend) negotiate() {
	d := &f.Disk
	d.Queues = max(1, min(f.opts.Queues, f.offer("multi-queue-max-queues", 1)))
	d.RingPages = 1 << min(f.opts.RingPageOrder, f.offer("max-ring-page-order", 0))
}

// negotiateRequests settles what requests may use, from what the backend
// offers at Connected: persistent grants if both sides said so, and
// indirect segments up to both sides' limits.
func (f *Frontend) negotiateRequests() {
	d := &f.Disk
	d.Persistent = f.opts.Persistent && f.offer("feature-persistent", 0) == 1
	d.MaxSegments = blkif.MaxDirectSegments
	if n := min(f.opts.IndirectSegments, f.offer("feature-max-indirect-segments", 0)); n > blkif.MaxDirectSegments {
		d.MaxSegments = n
	}
}

// maxSegments is the most segments a request of this frontend can have,
// whatever the backend offers.
func (f *Frontend) maxSegments() int {
	return max(f.opts.IndirectSegments, blkif.MaxDirectSegments)
}

// setupRings builds every ring and returns the keys that publish them.
func (f *Frontend) setupRings() ([][2]string, error) {
	var keys [][2]string
	add := func(k, v string) { keys = append(keys, [2]string{k, v}) }
	if !f.opts.OmitProtocol {
		add("protocol", f.opts.Protocol)
	}
	if f.Disk.RingPages > 1 {
		add("ring-page-order", strconv.Itoa(log2(f.Disk.RingPages)))
	}
	if f.Disk.Queues > 1 {
		add("multi-queue-num-queues", strconv.Itoa(f.Disk.Queues))
	}
	if f.opts.Persistent {
		add("feature-persistent", "1") // used if the backend offers it too
	}
	for q := range f.Disk.Queues {
		r, err := newRing(f)
		if r != nil {
			f.rings = append(f.rings, r) // teardown releases what it holds
		}
		if err != nil {
			return nil, err
		}
		dir := ""
		if f.Disk.Queues > 1 {
			dir = fmt.Sprintf("queue-%d/", q)
		}
		if f.Disk.RingPages == 1 {
			add(dir+"ring-ref", strconv.FormatUint(uint64(r.refs[0]), 10))
		} else {
			for i, ref := range r.refs {
				add(fmt.Sprintf("%sring-ref%d", dir, i), strconv.FormatUint(uint64(ref), 10))
			}
		}
		add(dir+"event-channel", strconv.FormatUint(uint64(r.port), 10))
	}
	return keys, nil
}

func log2(n int) int {
	k := 0
	for 1<<k < n {
		k++
	}
	return k
}

// teardown releases every ring. A grant the backend still has mapped
// cannot be ended: that is a backend leak, and an error.
func (f *Frontend) teardown() error {
	var errs []error
	for _, r := range f.rings {
		errs = append(errs, r.close())
	}
	f.rings = nil
	return errors.Join(errs...)
}

func (f *Frontend) readDisk() error {
	d := &f.Disk
	var err error
	if d.Sectors, err = f.readUint(f.bePath + "/sectors"); err != nil {
		return err
	}
	ss, err := f.readUint(f.bePath + "/sector-size")
	if err != nil {
		return err
	}
	d.SectorSize = uint32(ss)
	pss, err := f.readUint(f.bePath + "/physical-sector-size")
	if err != nil {
		pss = ss
	}
	d.PhysicalSectorSize = uint32(pss)
	info, err := f.readUint(f.bePath + "/info")
	if err != nil {
		return err
	}
	d.Info = int(info)
	d.FlushCache = f.readBool(f.bePath + "/feature-flush-cache")
	d.Barrier = f.readBool(f.bePath + "/feature-barrier")
	d.Discard = f.readBool(f.bePath + "/feature-discard")
	if g, err := f.readUint(f.bePath + "/discard-granularity"); err == nil {
		d.DiscardGranularity = uint32(g)
	}
	f.negotiateRequests()
	return nil
}

// Refresh re-reads the disk size, as blkfront does when the backend
// rewrites its state after an online resize.
func (f *Frontend) Refresh() error {
	n, err := f.readUint(f.bePath + "/sectors")
	if err == nil {
		f.Disk.Sectors = n
	}
	return err
}

// Close walks the frontend to Closed as blkfront does on detach: Closing,
// wait for the backend to close, Closed, then release the rings. Requests
// must have completed.
func (f *Frontend) Close(ctx context.Context) error {
	if err := f.setState(blkif.StateClosing); err != nil {
		return err
	}
	if _, err := f.waitBackend(ctx, blkif.StateClosing, blkif.StateClosed); err != nil {
		return err
	}
	if err := f.setState(blkif.StateClosed); err != nil {
		return err
	}
	if _, err := f.waitBackend(ctx, blkif.StateClosed, blkif.StateClosed); err != nil {
		return err
	}
	return f.teardown()
}

// Destroyed releases the rings without a handshake, as a guest's death
// does, once the backend has let go of them (it fails for a grant the
// backend still has mapped).
func (f *Frontend) Destroyed() error { return f.teardown() }

// Reinitialise moves a closed frontend back to Initialising, as a guest
// does after migration or a driver reload; Connect then reconnects.
func (f *Frontend) Reinitialise() error {
	return f.setState(blkif.StateInitialising)
}

// BackendState reads the backend's state key.
func (f *Frontend) BackendState() (int, error) {
	v, err := f.readUint(f.bePath + "/state")
	return int(v), err
}

func (f *Frontend) setState(s int) error {
	return f.xs.Write(f.path+"/state", strconv.Itoa(s))
}

// waitBackend waits until the backend's state is within [lo, hi] and
// returns it.
func (f *Frontend) waitBackend(ctx context.Context, lo, hi int) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, f.opts.Timeout)
	defer cancel()
	changed := make(chan struct{}, 1)
	w, err := f.xs.Watch(f.bePath+"/state", "be:"+f.path, func(string) {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return 0, err
	}
	defer w.Close()
	for {
		s, err := f.BackendState()
		if err == nil && s >= lo && s <= hi {
			return s, nil
		}
		if err != nil && hi == blkif.StateClosed {
			// A backend that removed its directory (a driver domain
			// after a detach) is as closed as it gets. Reading a key
			// under a removed directory fails with ENOENT or, where the
			// parent is not readable, EACCES: like Linux's xenbus, any
			// failure reads as Unknown.
			return blkif.StateClosed, nil
		}
		select {
		case <-ctx.Done():
			want := blkif.StateName(lo)
			if hi != lo {
				want += ".." + blkif.StateName(hi)
			}
			return s, fmt.Errorf("waiting for the backend to be %s (it is %s): %w", want, blkif.StateName(s), ctx.Err())
		case <-changed:
		}
	}
}

func (f *Frontend) readUint(path string) (uint64, error) {
	v, err := f.xs.Read(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(v, 10, 64)
}

func (f *Frontend) readBool(path string) bool {
	v, err := f.xs.Read(path)
	return err == nil && v == "1"
}

// grantRefs grants pages to the backend and returns their references.
func (f *Frontend) grantRefs(pages []xensim.Page, readOnly bool) ([]gnttab.Ref, error) {
	refs := make([]gnttab.Ref, len(pages))
	for i, p := range pages {
		ref, err := f.dom.Grant(f.beDom, p.Frame, readOnly)
		if err != nil {
			return nil, err
		}
		refs[i] = ref
	}
	return refs, nil
}
