// Package testbed assembles a whole simulated machine: a xenstore daemon
// on a real unix socket, a simulated hypervisor, the real blkdom backend
// serving in dom0, and guests whose reference frontends attach disks the
// way the toolstack does. The blkback tests and `blkdom demo` run on it.
package testbed

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/xensim"
	"blkdom/xensim/xenstored"
	"blkdom/xs"
)

// Bed is one simulated machine.
type Bed struct {
	Xen    *xensim.Xen
	Store  *xenstored.Server
	Socket string     // the xenstore socket, as XENSTORED_PATH
	Dom0   *xs.Client // the toolstack's connection
	// Backend is the blkdom backend serving in dom0.
	Backend *blkback.Backend

	backendXS *xs.Client
	cancel    context.CancelCauseFunc
	served    chan error
	platform  blkback.Platform
	opts      blkback.Options

	mu     sync.Mutex
	guests map[uint32]*xs.Client
}

// New starts a machine in dir (a fresh directory for the socket) with the
// backend serving in dom0, or in the driver domain opts.Domain. wrap, if given, wraps the simulated platform
// the backend uses, for tests that inject faults.
func New(dir string, opts blkback.Options, wrap ...func(blkback.Platform) blkback.Platform) (*Bed, error) {
	b := &Bed{Store: xenstored.New(), Socket: filepath.Join(dir, "xenstored.sock"),
		guests: make(map[uint32]*xs.Client), served: make(chan error, 1)}
	var err error
	if b.Xen, err = xensim.New(); err != nil {
		return nil, err
	}
	if err = b.Store.Listen(b.Socket); err != nil {
		b.Xen.Close()
		return nil, err
	}
	if b.Dom0, err = xs.Dial(b.Socket); err != nil {
		b.closeSim()
		return nil, err
	}
	if err = xensim.AddDomain(b.Dom0, 0, "Domain-0"); err != nil {
		b.closeSim()
		return nil, err
	}
	if b.backendXS, err = xs.Dial(b.Socket); err != nil {
		b.closeSim()
		return nil, err
	}
	// The backend serves in dom0, or in the driver domain opts.Domain.
	var self uint32
	if opts.Domain != nil {
		self = *opts.Domain
		if err := xensim.AddDomain(b.Dom0, self, "driver"); err != nil {
			b.closeSim()
			return nil, err
		}
	}
	dom := b.Xen.Domain(self)
	platform := blkback.NewPlatform(dom.OpenGrants, dom.OpenEvents)
	for _, w := range wrap {
		platform = w(platform)
	}
	b.platform, b.opts = platform, opts
	b.serve()
	return b, nil
}

// serve starts a backend on b.backendXS.
func (b *Bed) serve() {
	b.Backend = blkback.New(b.backendXS, b.platform, b.opts)
	ctx, cancel := context.WithCancelCause(context.Background())
	b.cancel = cancel
	go func() { b.served <- b.Backend.Serve(ctx) }()
}

// Restart stops the backend with cause (blkback.ErrAbandon: as if killed;
// blkback.ErrHandOver: a planned hand-over) and starts a new one, on a
// new xenstore connection, that adopts its connections.
func (b *Bed) Restart(cause error) error {
	b.cancel(cause)
	err := <-b.served
	b.backendXS.Close()
	if err != nil {
		return err
	}
	if b.backendXS, err = xs.Dial(b.Socket); err != nil {
		return err
	}
	b.serve()
	return nil
}

// Guest returns guest id's own xenstore connection, creating the domain
// on first use.
func (b *Bed) Guest(id uint32) (*xs.Client, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c := b.guests[id]; c != nil {
		return c, nil
	}
	if err := xensim.AddDomain(b.Dom0, id, fmt.Sprintf("guest%d", id)); err != nil {
		return nil, err
	}
	conn, err := b.Store.DialAs(id)
	if err != nil {
		return nil, err
	}
	c := xs.NewClient(conn)
	b.guests[id] = c
	return c, nil
}

// Attach adds disk d with the toolstack's keys and returns the guest's
// frontend for it, not yet connected.
func (b *Bed) Attach(d xensim.Disk, opts blkfront.Options) (*blkfront.Frontend, error) {
	c, err := b.Guest(d.Frontend)
	if err != nil {
		return nil, err
	}
	if err := xensim.AddDisk(b.Dom0, d); err != nil {
		return nil, err
	}
	return blkfront.New(c, b.Xen.Domain(d.Frontend), d.Devid, opts), nil
}

// Close stops the backend (which closes every device) and the machine,
// and returns the backend's error, if any.
func (b *Bed) Close() error {
	b.cancel(nil)
	err := <-b.served
	b.backendXS.Close()
	b.closeSim()
	return err
}

func (b *Bed) closeSim() {
	b.mu.Lock()
	for _, c := range b.guests {
		c.Close()
	}
	b.mu.Unlock()
	if b.Dom0 != nil {
		b.Dom0.Close()
	}
	b.Store.Close()
	b.Xen.Close()
}
