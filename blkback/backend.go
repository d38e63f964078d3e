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
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"blkdom/blkif"
	"blkdom/gnttab"
	"blkdom/xs"
)

// Options tune a Backend. The zero value offers everything Linux blkback
// offers, within DiskMemory per disk. Values beyond what the protocol can
// express are clamped (see withDefaults).
type Options struct {
	// Domain is this domain's id; by default it is read from xenstore's
	// "domid" key relative to the connection's home.
	Domain *uint32
	// Engine is the I/O engine: EngineUring (the default) or
	// EngineWorkers. Where io_uring cannot be had, rings use the workers.
	Engine string
	// Workers is the number of goroutines doing I/O per ring with the
	// workers engine, and the most requests a grant-copy ring keeps in
	// flight, each with a request's worth of bounce pages (default 8;
	// below 1: the default; at most a ring's 512 slots).
	Workers int
	// PollTime is how long a ring's loop keeps looking at an empty ring
	// after a batch before it re-arms the event channel and sleeps
	// (default 50µs; negative: never poll). A frontend that sends within
	// it needs no notification, and the backend no wakeup.
	PollTime time.Duration
	// Logger receives the backend's log (default slog.Default()).
	Logger *slog.Logger
	// MaxQueues is multi-queue-max-queues (default: this domain's CPUs),
	// lowered so that a disk's queues fit in DiskMemory.
	MaxQueues int
	// MaxRingPageOrder is max-ring-page-order (default 4: 16-page rings,
	// also the most: Linux's XENBUS_MAX_RING_GRANT_ORDER; negative:
	// single-page rings only).
	MaxRingPageOrder int
	// MaxIndirectSegments is feature-max-indirect-segments (default 256;
	// at most 4096, what one request's 8 indirect pages can name; at least
	// 11, what a direct request carries, as Linux's blkfront clamps its
	// own limit; negative: no indirect descriptors).
	MaxIndirectSegments int
	// PersistentGrants is the size of each ring's persistent-grant cache
	// (default 1056, as Linux; negative: feature-persistent not offered).
	PersistentGrants int
	// DiskMemory bounds what one disk's queues may cost this domain
	// (default 80 MiB; negative: no bound): the guest picks the queue
	// count, and each queue costs up to 25.4 MiB with the defaults
	// (see queueMemory). The queues offered are
	// lowered to fit; one queue is always offered.
	DiskMemory int64
	// Cache returns the default cache policy, asked each time a disk
	// connects (nil: CacheAuto): serve's -cache flag, or a driver
	// domain's blkdom/cache key as its configuration last said. A disk's
	// blkdom-cache key overrides it.
	Cache func() CachePolicy
	// ResizeInterval is how often a connected image's size is checked for
	// online resize (default 1s).
	ResizeInterval time.Duration
	// StatsInterval is how often each device's statistics are published
	// under its backend directory (default 5s).
	StatsInterval time.Duration
	// RescanInterval is how often backend/vbd is listed for devices whose
	// watch event was lost (default 1s; the toolstack gives up on a
	// device that has not reached InitWait after 10s).
	RescanInterval time.Duration
	// Probes, if set, is told of every completed request and counts late
	// network references to its pages.
	Probes Probes
	// StateDir, if set, is a directory on a tmpfs where each connected
	// ring keeps its ledger (see ledger): what a successor needs to adopt
	// the ring after this process is killed. blkdom serve uses
	// /run/blkdom. Without it a ring's ledger is in memory, and after a
	// kill -9 a successor adopts each ring at its rsp_prod, which loses
	// the requests then in flight.
	StateDir string
	// Ready, if set, says whether the image at path can be opened yet: in
	// a driver domain, false while the file system it lies on (an NFS
	// export) is configured but not mounted. A device whose frontend is
	// ready to connect then stays in InitWait until Ready calls wake.
	Ready func(path string, wake func()) bool
	// Serving, if set, is called once Serve watches backend/vbd: a
	// driver domain's PID 1 starts the rest of its start-up then, so that
	// on its one CPU nothing competes with getting there.
	Serving func()
}

// Limits of the protocol and defaults of the options.
const (
	maxRingPageOrder    = 4                                                      // XENBUS_MAX_RING_GRANT_ORDER
	maxIndirectSegments = blkif.MaxIndirectPages * blkif.SegmentsPerIndirectPage // 4096
	defaultDiskMemory   = 80 << 20
)

// withDefaults fills in the zero fields and clamps the others to what the
// protocol can express and DiskMemory allows.
func (o Options) withDefaults() Options {
	def := func(v *int, d int) {
		switch {
		case *v == 0:
			*v = d
		case *v < 0:
			*v = 0
		}
	}
	if o.Workers < 1 {
		o.Workers = 8
	}
	maxSlots := int(blkif.X86_64.RingEntries(1 << maxRingPageOrder))
	o.Workers = min(o.Workers, maxSlots)
	def(&o.MaxQueues, runtime.NumCPU())
	def(&o.MaxRingPageOrder, 4)
	def(&o.MaxIndirectSegments, 256)
	def(&o.PersistentGrants, 1056)
	o.MaxRingPageOrder = min(o.MaxRingPageOrder, maxRingPageOrder)
	if o.MaxIndirectSegments > 0 {
		o.MaxIndirectSegments = min(max(o.MaxIndirectSegments, blkif.MaxDirectSegments), maxIndirectSegments)
	}
	if o.DiskMemory == 0 {
		o.DiskMemory = defaultDiskMemory
	}
	if o.DiskMemory > 0 {
		o.MaxQueues = min(o.MaxQueues, int(o.DiskMemory/o.queueMemory()))
	}
	if o.MaxQueues < 1 {
		o.MaxQueues = 1
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case o.PollTime == 0:
		o.PollTime = 50 * time.Microsecond
	case o.PollTime < 0:
		o.PollTime = 0
	}
	if o.Engine == "" {
		o.Engine = EngineUring
	}
	if o.ResizeInterval <= 0 {
		o.ResizeInterval = time.Second
	}
	if o.StatsInterval <= 0 {
		o.StatsInterval = 5 * time.Second
	}
	if o.RescanInterval <= 0 {
		o.RescanInterval = time.Second
	}
	return o
}

// queueMemory is what one queue (ring) of a disk may cost at most with
// these options, in bytes: the bounce pages of the requests grant copy
// keeps in flight (Workers of them, a page per segment), the persistent
// grants it keeps mapped (at most twice each, see grantCache; each
// mapping takes a page frame of this domain), each slot's private copy of
// its request and its page bookkeeping (made on the slot's first use),
// and the ring's own pages.
func (o Options) queueMemory() int64 {
	const page = gnttab.PageSize
	segs := int64(max(blkif.MaxDirectSegments, o.MaxIndirectSegments))
	pages := int64(1) << max(o.MaxRingPageOrder, 0)
	slots := int64(blkif.X86_64.RingEntries(int(pages)))
	bounce := int64(max(o.Workers, 1)) * segs * page
	slot := segs*(8+64) + int64(blkif.X86_64.EntrySize) // a Segment is 8 bytes; iovec, page and grant bookkeeping 64
	return bounce + 2*int64(max(o.PersistentGrants, 0))*page + slots*slot + pages*page
}

// Backend serves every vbd under one domain's backend/vbd directory.
type Backend struct {
	xs       *xs.Client
	platform Platform
	opts     Options
	log      *slog.Logger
	home     string // <domain path>
	base     string // <domain path>/backend/vbd
	// removeClosed: remove a detached device's backend directory once it
	// is Closed, as xl devd does in a driver domain. In dom0 the
	// toolstack itself does it.
	removeClosed bool

	mu      sync.Mutex
	devices map[string]*device // by backend directory
	lastID  uint32             // the last disk id handed out
	token   string             // this backend's owner token (see claim)
	stop    chan struct{}
	// ending is why Serve stopped (its context's cause), set before stop
	// is closed: it says how devices let go (see ErrHandOver).
	ending error
	// publish asks housekeep to publish a device's statistics now (a
	// device that just connected) rather than at the next tick.
	publish chan *device
}

// New returns a Backend that talks to xenstore through c and to Xen
// through p.
func New(c *xs.Client, p Platform, opts Options) *Backend {
	opts = opts.withDefaults()
	return &Backend{xs: c, platform: p, opts: opts, log: opts.Logger,
		devices: make(map[string]*device), stop: make(chan struct{}), publish: make(chan *device, 16)}
}

// publishSoon has d's statistics published without waiting for the next
// tick, so "blkdom stat" shows a disk as soon as it connects. It never
// blocks: with the queue full, the tick publishes it.
func (b *Backend) publishSoon(d *device) {
	select {
	case b.publish <- d:
	default:
	}
}

// ErrHandOver, as the cause of Serve's context (context.WithCancelCause),
// stops Serve for a successor that adopts its connections: each ring
// stops taking requests, answers those it took, and is unmapped and
// unbound; each image is flushed and closed; but no device's state
// changes, so the frontends see nothing but a pause. blkdom serve does it
// on SIGUSR2, before it execs its successor.
var ErrHandOver = errors.New("handing over to a successor")

// ErrAbandon, as the cause of Serve's context, stops Serve the way
// SIGKILL stops a process: each ring is dropped where it stands, with
// requests in flight and responses not yet published, its handles closed
// and its ledger left for a successor; nothing is written to xenstore but
// the removal of the owner token, so that a successor in the same process
// may claim the directory (a killed process's token is taken over as
// stale). It is for tests of adoption.
var ErrAbandon = errors.New("abandoned as if killed")

// Serve watches backend/vbd and serves each device found there until ctx
// is done. It then disconnects every device (draining, flushing and
// closing its image) and moves it to Closed before returning, unless
// ctx's cause is ErrHandOver or ErrAbandon. It refuses to start, with
// ErrOtherBackend, when another backend serves the same directory (see
// claim).
//
// A device that is Connected on both sides when Serve finds it was
// connected by a predecessor (blkdom killed and started again, or handing
// over): Serve adopts it without a handshake (see device.adopt).
func (b *Backend) Serve(ctx context.Context) error {
	dom, err := b.domain()
	if err != nil {
		return err
	}
	home, err := b.xs.GetDomainPath(dom)
	if err != nil {
		return fmt.Errorf("domain path of %d: %w", dom, err)
	}
	if err := b.claim(home); err != nil {
		return err
	}
	defer b.unclaim(home)
	b.home = home
	b.base = home + "/backend/vbd"
	b.removeClosed = dom != 0
	b.sweepLedgers()
	w, err := b.xs.Watch(b.base, "vbd", b.changed)
	if err != nil {
		return fmt.Errorf("watching %s: %w", b.base, err)
	}
	b.log.Info("serving", "domain", dom, "path", b.base)
	if b.opts.Serving != nil {
		b.opts.Serving()
	}
	b.housekeep(ctx)
	w.Close()
	b.mu.Lock()
	b.ending = context.Cause(ctx)
	close(b.stop)
	b.mu.Unlock()
	devices := b.snapshotDevices()
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
	parts := strings.SplitN(strings.TrimPrefix(rest, "/"), "/", 4)
	if len(parts) >= 3 && parts[2] == statsDir {
		return // our own statistics
	}
	if len(parts) == 3 && ownKeys[parts[2]] && b.known(parts[0], parts[1]) {
		return // our own key (an unknown device's first event is news)
	}
	if len(parts) >= 2 {
		if b.kick(parts[0], parts[1]) {
			// Let the new device's first look go out now, ahead of the
			// rest of the burst of events its creation fired: with one
			// CPU, each event the watch's reader queues makes this
			// callback the next goroutine to run, ahead of the device's
			// (a driver domain's first disk waited behind five events).
			runtime.Gosched()
		}
		return
	}
	b.rescan()
}

// rescan kicks every device under backend/vbd, and thereby notices new and
// removed ones.
func (b *Backend) rescan() {
	b.startNew()
	for _, d := range b.snapshotDevices() {
		d.poke()
	}
}

// startNew starts every device under backend/vbd that has none yet. Run
// periodically, it is the safety net for a watch event that never came.
func (b *Backend) startNew() {
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
			if !b.known(fe, id) {
				b.kick(fe, id)
			}
		}
	}
}

// known says whether the device <fe>/<devid> is being served.
func (b *Backend) known(fe, devid string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.devices[b.base+"/"+fe+"/"+devid] != nil
}

// snapshotDevices lists the devices being served now.
func (b *Backend) snapshotDevices() []*device {
	b.mu.Lock()
	defer b.mu.Unlock()
	ds := make([]*device, 0, len(b.devices))
	for _, d := range b.devices {
		ds = append(ds, d)
	}
	return ds
}

// kick wakes the device <fe>/<devid>, starting it if it is new, and says
// whether it started it. Names that are not numbers are not devices and
// are ignored.
func (b *Backend) kick(fe, devid string) (started bool) {
	feDom, err := strconv.ParseUint(fe, 10, 16)
	if err != nil {
		return false
	}
	if _, err := strconv.ParseUint(devid, 10, 32); err != nil {
		return false
	}
	path := b.base + "/" + fe + "/" + devid
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-b.stop:
		return false
	default:
	}
	d := b.devices[path]
	if d == nil {
		started = true
		b.lastID++
		d = &device{b: b, path: path, feDom: uint32(feDom), devid: devid, id: b.lastID, found: time.Now(),
			log:  rateLimited(b.log, time.Now).With("vbd", fe+"/"+devid),
			kick: make(chan struct{}, 1), stop: b.stop, done: make(chan struct{})}
		b.devices[path] = d
		go func() {
			// At debug level: its "waiting for the frontend" line says
			// how long since the device was found (took=), and in a
			// driver domain a line on the console costs milliseconds on
			// the way to InitWait (8 ms measured under emulation, with the
			// kernel echoing blkdom's log on the Xen console).
			d.log.Debug("vbd found")
			d.run()
			b.mu.Lock()
			if b.devices[path] == d {
				delete(b.devices, path)
			}
			b.mu.Unlock()
			// The toolstack may have created the device again while this
			// one was going away, and its events went to this one.
			if _, err := b.xs.Read(path + "/state"); err == nil {
				b.kick(fe, devid)
			}
		}()
	}
	d.poke()
	return started
}

// statsDir is the directory under each backend directory where its
// statistics are published.
const statsDir = "statistics"

// housekeep runs the backend's periodic work until ctx is done: it looks
// for devices whose watch event was lost (every RescanInterval), and
// publishes every device's statistics and the process's CPU time (every
// StatsInterval).
func (b *Backend) housekeep(ctx context.Context) {
	rescan := time.NewTicker(b.opts.RescanInterval)
	defer rescan.Stop()
	stats := time.NewTicker(b.opts.StatsInterval)
	defer stats.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-rescan.C:
			b.startNew()
		case <-stats.C:
			for _, d := range b.snapshotDevices() {
				b.publishStats(d, false)
			}
			b.publishCPU()
		case d := <-b.publish:
			b.publishStats(d, true)
		}
	}
}

// publishStats writes a device's statistics in one transaction, if they
// changed or force is set: an idle disk costs no xenstore traffic.
func (b *Backend) publishStats(d *device, force bool) {
	snap := d.snapshot()
	if snap == d.published && !force {
		return
	}
	kv := snap.Keys()
	err := b.xs.Transaction(func(tx *xs.Tx) error {
		// Never recreate a directory the toolstack removed.
		if _, err := tx.Read(d.path + "/state"); err != nil {
			return err
		}
		for _, p := range kv {
			if err := tx.Write(d.path+"/"+statsDir+"/"+p[0], p[1]); err != nil {
				return err
			}
		}
		return nil
	})
	switch {
	case err == nil:
		d.published = snap
	case !errors.Is(err, syscall.ENOENT):
		d.log.Warn("publishing statistics", "err", err)
	}
}

// feature is one key the backend publishes.
type feature struct{ key, value string }

// features lists what a frontend reads when the backend is in InitWait,
// to set up its rings: the ring size and the number of queues. They go out
// before InitWait, each only when it is not the protocol's default
// (blkif.h: order 0, one queue), which a frontend assumes for a key that
// is absent: a driver domain with one CPU offers one queue, and every
// message saved shortens its way to InitWait.
func (b *Backend) features() []feature {
	o := b.opts
	var fs []feature
	if o.MaxRingPageOrder > 0 {
		fs = append(fs, feature{"max-ring-page-order", strconv.Itoa(o.MaxRingPageOrder)})
	}
	if o.MaxQueues > 1 {
		fs = append(fs, feature{"multi-queue-max-queues", strconv.Itoa(o.MaxQueues)})
	}
	return fs
}

// hotplugStatus is what a driver domain's hotplug script writes once the
// backend is in InitWait (xl devd runs it then): libxl may wait for it,
// and no script runs for a userspace backend, so blkdom writes it with
// InitWait.
var hotplugStatus = feature{"hotplug-status", "connected"}

// ownKeys are the keys of a device's directory that only the backend
// writes. The watch's events for them are its own writes and call for
// nothing, like those of its statistics; a guest's creation fires enough
// events that reconciling for each costs a PV domain under emulation
// time it needs for the next device.
var ownKeys = map[string]bool{
	"feature-persistent": true, "feature-max-indirect-segments": true,
	"max-ring-page-order": true, "multi-queue-max-queues": true,
	hotplugStatus.key: true, "sectors": true, "info": true, "sector-size": true,
	"physical-sector-size": true, PolicyKey: true, "feature-flush-cache": true,
	"feature-barrier": true, "feature-discard": true, "discard-granularity": true,
	"discard-alignment": true, "discard-secure": true, "physical-device": true,
}

// connectFeatures lists what the backend offers that frontends read when
// it connects: persistent grants (Linux blkback writes them then too),
// indirect segments (Linux's, FreeBSD's and blkdom's blkfront read them
// then), flush and barrier, discard only where the store can do it, and
// the physical device.
func (b *Backend) connectFeatures(cfg config, si storeInfo) []feature {
	o := b.opts
	fs := []feature{
		{"feature-persistent", boolKey(o.PersistentGrants > 0)},
		{"feature-max-indirect-segments", strconv.Itoa(o.MaxIndirectSegments)},
		{"feature-flush-cache", "1"}, {"feature-barrier", "1"},
	}
	if dev, ok := physicalDevice(cfg.params); ok {
		fs = append(fs, feature{"physical-device", dev})
	}
	if !b.discardOffered(cfg, si) {
		return append(fs, feature{"feature-discard", "0"})
	}
	return append(fs,
		feature{"feature-discard", "1"},
		feature{"discard-granularity", strconv.FormatUint(uint64(max(si.discardGranularity, si.sectorSize)), 10)},
		feature{"discard-alignment", "0"},
		feature{"discard-secure", boolKey(si.discardSecure)})
}

func boolKey(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// discardOffered: the store can deallocate, the toolstack did not turn
// discard off (discard-enable), and the disk is writable (CVE-2013-2140).
func (b *Backend) discardOffered(cfg config, si storeInfo) bool {
	return si.discard && cfg.discardEnable && !cfg.readOnly
}

// policy chooses how a disk's data travels between image and guest, and
// says why; the default is asked at each connect, so a change applies to
// the next disk that connects.
func (b *Backend) policy(dev string, cfg config, si storeInfo) (cachePolicy, string) {
	def := CacheAuto
	if b.opts.Cache != nil {
		def = b.opts.Cache()
	}
	p, why, err := choosePolicy([]policySource{
		{cfg.cache, dev + "/blkdom-cache"},
		{string(def), "the default (serve -cache, a driver domain's blkdom/cache)"},
	}, cfg.directIO, si.network)
	if err != nil {
		b.log.Warn("ignoring a cache policy", "err", err)
	}
	return p, why
}

// PolicyKey is the key in a disk's backend directory where blkdom writes
// the cache policy in force while it is connected: direct, buffered or
// grant-copy.
const PolicyKey = "blkdom-cache-policy"

// policySource is one place a cache policy may be set, and its name.
type policySource struct{ value, where string }

// choosePolicy takes the first explicit choice among sources, in order
// (a disk's blkdom-cache key, then the default).
// Without one ("auto") it trusts the toolstack's direct-io-safe=1, keeps
// network storage off O_DIRECT (its network stack may still reference the
// pages after completion, and then sends what the guest has written there
// since), and uses O_DIRECT on local
// storage. An unknown value is skipped and reported.
func choosePolicy(sources []policySource, directIOSafe bool, network string) (cachePolicy, string, error) {
	var bad error
	for _, s := range sources {
		if p, ok := resolve(CachePolicy(s.value)); ok {
			return p, "set by " + s.where, bad
		}
		if _, err := ParseCachePolicy(s.value); err != nil && s.value != "" && bad == nil {
			bad = fmt.Errorf("%s: %w", s.where, err)
		}
	}
	switch {
	case directIOSafe:
		return policyDirect, "direct-io-safe=1", bad
	case network != "":
		return policyBuffered, network + " storage is not safe for O_DIRECT", bad
	}
	return policyDirect, "local storage", bad
}

// EachDevice calls fn with a snapshot of every device's statistics, and
// the name the toolstack gave the device ("xvda", its backend's dev key;
// empty if there is none).
func (b *Backend) EachDevice(fn func(frontend uint32, devid, name string, s Stats)) {
	devices := b.snapshotDevices()
	slices.SortFunc(devices, func(x, y *device) int { return strings.Compare(x.path, y.path) })
	for _, d := range devices {
		name, _ := b.xs.Read(d.path + "/dev")
		fn(d.feDom, d.devid, name, d.snapshot())
	}
}
