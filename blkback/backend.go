// Package blkback is the blkif backend: it serves the virtual block devices
// that the toolstack puts under this domain's backend/vbd directory in
// xenstore, from disk images or block devices, to the guests' frontends.
//
// blkback owns the protocol: the xenstore handshake of each device, the
// shared ring, request validation, and moving data between the image and
// the guest's granted pages. It does not own xenstore's wire protocol (xs),
// grant mapping (gnttab) or event channels (evtchn); it reaches the last two
// through the Platform interface, so it runs on real Xen and on a simulated
// one alike.
package blkback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"blkdom/xs"
)

// Options tune a Backend. The zero value is usable.
type Options struct {
	// Domain is this domain's id; by default it is read from xenstore's
	// "domid" key relative to the connection's home.
	Domain *uint32
	// Workers is the number of goroutines doing I/O per ring (default 8).
	Workers int
	// Logger receives the backend's log (default slog.Default()).
	Logger *slog.Logger
}

// Backend serves every vbd under one domain's backend/vbd directory.
type Backend struct {
	xs       *xs.Client
	platform Platform
	opts     Options
	log      *slog.Logger
	base     string // <domain path>/backend/vbd

	mu      sync.Mutex
	devices map[string]*device // by backend directory
	stop    chan struct{}
}

// New returns a Backend that talks to xenstore through c and to Xen
// through p.
func New(c *xs.Client, p Platform, opts Options) *Backend {
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Backend{xs: c, platform: p, opts: opts, log: opts.Logger,
		devices: make(map[string]*device), stop: make(chan struct{})}
}

// Serve watches backend/vbd and serves each device found there until ctx
// is done. It then disconnects every device (draining, flushing and
// closing its image) and moves it to Closed before returning.
func (b *Backend) Serve(ctx context.Context) error {
	dom, err := b.domain()
	if err != nil {
		return err
	}
	home, err := b.xs.GetDomainPath(dom)
	if err != nil {
		return fmt.Errorf("domain path of %d: %w", dom, err)
	}
	b.base = home + "/backend/vbd"
	b.log.Info("serving", "domain", dom, "path", b.base)
	w, err := b.xs.Watch(b.base, "vbd", b.changed)
	if err != nil {
		return fmt.Errorf("watching %s: %w", b.base, err)
	}
	<-ctx.Done()
	w.Close()
	b.mu.Lock()
	close(b.stop)
	devices := make([]*device, 0, len(b.devices))
	for _, d := range b.devices {
		devices = append(devices, d)
	}
	b.mu.Unlock()
	for _, d := range devices {
		<-d.done
	}
	b.log.Info("stopped")
	return nil
}

func (b *Backend) domain() (uint32, error) {
	if b.opts.Domain != nil {
		return *b.opts.Domain, nil
	}
	v, err := b.xs.Read("domid")
	if err != nil {
		return 0, fmt.Errorf("reading own domid: %w", err)
	}
	id, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("own domid %q: %w", v, err)
	}
	return uint32(id), nil
}

// changed handles a watch event at or below backend/vbd. An event on a
// device's directory or any key in it kicks that device, creating it the
// first time; an event on backend/vbd itself (the first one, or one that
// stands for several) rescans the whole directory.
func (b *Backend) changed(path string) {
	rest, ok := strings.CutPrefix(path, b.base)
	if !ok {
		return
	}
	parts := strings.SplitN(strings.TrimPrefix(rest, "/"), "/", 3)
	if len(parts) >= 2 {
		b.kick(parts[0], parts[1])
		return
	}
	b.rescan()
}

// rescan kicks every device under backend/vbd, and thereby notices new and
// removed ones.
func (b *Backend) rescan() {
	fes, err := b.xs.Directory(b.base)
	if err != nil && !errors.Is(err, syscall.ENOENT) {
		b.log.Error("listing devices", "err", err)
	}
	for _, fe := range fes {
		ids, err := b.xs.Directory(b.base + "/" + fe)
		if err != nil {
			continue
		}
		for _, id := range ids {
			b.kick(fe, id)
		}
	}
	b.mu.Lock()
	existing := make([]*device, 0, len(b.devices))
	for _, d := range b.devices {
		existing = append(existing, d)
	}
	b.mu.Unlock()
	for _, d := range existing {
		d.poke()
	}
}

// kick wakes the device <fe>/<devid>, starting it if it is new. Names that
// are not numbers are not devices and are ignored.
func (b *Backend) kick(fe, devid string) {
	feDom, err := strconv.ParseUint(fe, 10, 16)
	if err != nil {
		return
	}
	if _, err := strconv.ParseUint(devid, 10, 32); err != nil {
		return
	}
	path := b.base + "/" + fe + "/" + devid
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-b.stop:
		return
	default:
	}
	d := b.devices[path]
	if d == nil {
		d = &device{b: b, path: path, feDom: uint32(feDom), devid: devid,
			log:  b.log.With("vbd", fe+"/"+devid),
			kick: make(chan struct{}, 1), stop: b.stop, done: make(chan struct{})}
		b.devices[path] = d
		go func() {
			d.run()
			b.mu.Lock()
			if b.devices[path] == d {
				delete(b.devices, path)
			}
			b.mu.Unlock()
		}()
	}
	d.poke()
}

// feature is one key the backend publishes before InitWait.
type feature struct{ key, value string }

// features lists what the backend offers for a device. The hotplug keys
// are what a driver domain's hotplug script would write: libxl waits for
// them, and no script runs for a userspace backend.
func (b *Backend) features(cfg config) []feature {
	fs := []feature{
		{"feature-flush-cache", "1"},
		{"feature-barrier", "1"},
		{"hotplug-status", "connected"},
	}
	if dev, ok := physicalDevice(cfg.params); ok {
		fs = append(fs, feature{"physical-device", dev})
	}
	return fs
}
