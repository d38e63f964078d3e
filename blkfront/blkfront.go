// Package blkfront is a reference blkif frontend for the simulated Xen.
// At the protocol level it behaves like Linux's xen-blkfront: it grants
// its ring and data pages to the backend, publishes ring-ref,
// event-channel and protocol, walks the xenbus states, and keeps many
// requests in flight. Tests and the demo drive blkback with it; its raw
// access to the ring lets tests play a hostile frontend too.
//
// blkfront owns the guest side of one device. It does not own the
// toolstack's part (creating the xenstore directories: xensim.AddDisk).
package blkfront

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"blkdom/blkif"
	"blkdom/evtchn"
	"blkdom/gnttab"
	"blkdom/xensim"
	"blkdom/xs"
)

// Options tune a Frontend. The zero value is Linux's behaviour.
type Options struct {
	// Protocol is written to the "protocol" key; default x86_64-abi.
	Protocol string
	// OmitProtocol leaves the "protocol" key out, as old frontends do.
	OmitProtocol bool
	// Timeout bounds each handshake step (default 10s).
	Timeout time.Duration
}

// Disk is what the backend published at connect.
type Disk struct {
	Sectors    uint64 // in 512-byte units
	SectorSize uint32
	Info       int
	FlushCache bool
	Barrier    bool
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

	// The connection, set by Connect and torn down by Close.
	ringPage xensim.Page
	ringRef  gnttab.Ref
	events   *xensim.Events
	port     evtchn.Port
	idx      *blkif.Indexes
	entries  []byte
	size     uint32
	slots    []pending
	free     chan uint16
	waiter   sync.WaitGroup

	mu         sync.Mutex // guards the request producer
	reqProdPvt uint32
	rspCons    uint32 // owned by the response goroutine
}

// pending is one request slot: its pages, granted while in flight, and
// where its status goes.
type pending struct {
	pages  []xensim.Page
	refs   []gnttab.Ref
	status chan int16
	timer  *time.Timer // bounds the wait for status; reused
}

// New returns the frontend of device devid of the guest dom, which talks
// to xenstore through c (a connection made as that guest).
func New(c *xs.Client, dom *xensim.Domain, devid int, opts Options) *Frontend {
	if opts.Protocol == "" {
		opts.Protocol = blkif.X86_64.Name
	}
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	return &Frontend{xs: c, dom: dom, opts: opts,
		path: fmt.Sprintf("/local/domain/%d/device/vbd/%d", dom.ID(), devid)}
}

// Connect performs the handshake: wait for the backend's InitWait, set up
// and publish the ring, go Initialised, wait for Connected, read the disk.
func (f *Frontend) Connect(ctx context.Context) error {
	var err error
	if f.bePath, err = f.xs.Read(f.path + "/backend"); err != nil {
		return err
	}
	id, err := f.readUint(f.path + "/backend-id")
	if err != nil {
		return err
	}
	f.beDom = uint32(id)
	if _, err := f.waitBackend(ctx, blkif.StateInitWait, blkif.StateInitWait); err != nil {
		return err
	}
	if f.abi, err = blkif.ABIFor(f.opts.Protocol); err != nil {
		return err
	}
	if err := f.setupRing(); err != nil {
		return err
	}
	err = f.xs.Transaction(func(tx *xs.Tx) error {
		kv := [][2]string{
			{"ring-ref", strconv.FormatUint(uint64(f.ringRef), 10)},
			{"event-channel", strconv.FormatUint(uint64(f.port), 10)},
		}
		if !f.opts.OmitProtocol {
			kv = append(kv, [2]string{"protocol", f.opts.Protocol})
		}
		for _, p := range kv {
			if err := tx.Write(f.path+"/"+p[0], p[1]); err != nil {
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

// setupRing allocates, initialises and grants the ring page, allocates
// the event channel and the request slots, and starts taking responses.
func (f *Frontend) setupRing() error {
	pages, err := f.dom.AllocPages(1)
	if err != nil {
		return err
	}
	f.ringPage = pages[0]
	clear(f.ringPage.Mem)
	f.idx = blkif.IndexesOf(f.ringPage.Mem)
	f.idx.SetRspEvent(1) // SHARED_RING_INIT
	f.idx.SetReqEvent(1)
	f.entries = f.ringPage.Mem[blkif.RingHeaderSize:]
	f.size = f.abi.RingEntries(1)
	f.reqProdPvt, f.rspCons = 0, 0
	if f.ringRef, err = f.dom.Grant(f.beDom, f.ringPage.Frame, false); err != nil {
		return err
	}
	if f.events, err = f.dom.OpenEvents(); err != nil {
		return err
	}
	if f.port, err = f.events.BindUnboundPort(f.beDom); err != nil {
		return err
	}
	f.slots = make([]pending, f.size)
	f.free = make(chan uint16, f.size)
	for i := range f.slots {
		p := &f.slots[i]
		if p.pages, err = f.dom.AllocPages(blkif.MaxDirectSegments); err != nil {
			return err
		}
		p.refs = make([]gnttab.Ref, blkif.MaxDirectSegments)
		p.status = make(chan int16, 1)
		p.timer = time.NewTimer(time.Hour)
		p.timer.Stop()
		f.free <- uint16(i)
	}
	f.waiter.Add(1)
	go f.responses()
	return nil
}

// teardown releases what setupRing took. Every grant must be ended: one
// still mapped by the backend is an error, reported by Close.
func (f *Frontend) teardown() error {
	var errs []error
	if f.events != nil {
		errs = append(errs, f.events.Close())
		f.waiter.Wait()
		f.events = nil
	}
	if f.ringPage.Mem != nil {
		errs = append(errs, f.dom.EndGrant(f.ringRef))
		errs = append(errs, f.dom.FreePages([]xensim.Page{f.ringPage}))
		f.ringPage = xensim.Page{}
	}
	for _, p := range f.slots {
		if p.pages != nil {
			errs = append(errs, f.dom.FreePages(p.pages))
		}
	}
	f.slots = nil
	return errors.Join(errs...)
}

func (f *Frontend) readDisk() error {
	var err error
	if f.Disk.Sectors, err = f.readUint(f.bePath + "/sectors"); err != nil {
		return err
	}
	ss, err := f.readUint(f.bePath + "/sector-size")
	if err != nil {
		return err
	}
	f.Disk.SectorSize = uint32(ss)
	info, err := f.readUint(f.bePath + "/info")
	if err != nil {
		return err
	}
	f.Disk.Info = int(info)
	f.Disk.FlushCache = f.readBool(f.bePath + "/feature-flush-cache")
	f.Disk.Barrier = f.readBool(f.bePath + "/feature-barrier")
	return nil
}

// Close walks the frontend to Closed as blkfront does on detach: Closing,
// wait for the backend to close, Closed, then release the ring. Requests
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
		select {
		case <-ctx.Done():
			return s, fmt.Errorf("waiting for backend state %d..%d (now %d): %w", lo, hi, s, ctx.Err())
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
