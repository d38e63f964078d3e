package blkback

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"blkdom/blkif"
	"blkdom/evtchn"
	"blkdom/gnttab"
	"blkdom/xs"
)

// device is one virtual block device: the backend directory
// <domain>/backend/vbd/<frontend-id>/<devid> and the frontend it serves.
// One goroutine (run) owns it and reconciles it with xenstore each time a
// watch kicks it, so any order or repetition of frontend states leads to
// the same result (XSA-350) and a storm of watch events costs at most one
// pass (XSA-349).
type device struct {
	b     *Backend
	path  string // backend directory
	feDom uint32
	devid string
	id    uint32 // names the disk to the eBPF probes
	log   *slog.Logger

	// Owned by run.
	state int // the state this backend last wrote
	// key is the state key as last read or written: the toolstack writes
	// it too (Closing), possibly after this backend has moved on.
	key    int
	fePath string // the frontend directory, from the "frontend" key
	// closedAt is when a detached device was first seen Closed with its
	// frontend still there (see removable).
	closedAt time.Time
	feWatch  *xs.Watch // on the frontend's state
	errored  bool      // an error node was written (see fatal)
	conn     *connection

	// published is the last statistics written to xenstore; owned by the
	// backend's publisher.
	published Stats

	kick  chan struct{} // capacity 1: pending wakeups coalesce
	stop  chan struct{} // closed when the backend stops
	done  chan struct{} // closed when run has returned
	stats deviceStats
}

// config is what the toolstack wrote into the backend directory.
type config struct {
	params   string // image path
	readOnly bool   // mode "r"
	cdrom    bool   // device-type "cdrom"
	directIO bool   // direct-io-safe
	online   bool
	// discardEnable is the toolstack's discard-enable (default on).
	discardEnable bool
	// cache is the disk's blkdom-cache key: its cache policy, if set.
	cache    string
	frontend string
	state    int // the state key as it is now, whoever wrote it
}

// snapshot reads the device's statistics, with the probes' count of late
// references (-1 without probes).
func (d *device) snapshot() Stats {
	late := int64(-1)
	if p := d.b.opts.Probes; p != nil {
		if n, err := p.LateRefs(d.id); err == nil {
			late = int64(n)
		}
	}
	return d.stats.snapshot(late)
}

func (d *device) poke() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// run reconciles the device until its directory disappears or the backend
// stops; either way it disconnects first.
func (d *device) run() {
	defer close(d.done)
	defer d.unwatch()
	defer d.clearError()
	for {
		select {
		case <-d.stop:
			switch {
			case errors.Is(d.b.ending, ErrHandOver):
				d.disconnect()
			case errors.Is(d.b.ending, ErrAbandon):
				d.abandon()
			default:
				d.disconnect()
				d.setState(blkif.StateClosed)
			}
			return
		case <-d.kick:
		}
		var gone bool
		if err := guard(func() { gone = d.reconcile() }); err != nil {
			d.log.Error("bug while reconciling: closing the device", "err", err)
			if err := guard(d.disconnect); err != nil {
				d.log.Error("bug while disconnecting", "err", err)
				d.conn = nil
			}
			d.setState(blkif.StateClosing)
		}
		if gone {
			d.disconnect()
			return
		}
	}
}

// reconcile looks at both sides' states and does what they call for. It
// returns true when the backend directory is gone.
func (d *device) reconcile() bool {
	cfg, err := d.readConfig(d.state == blkif.StateUnknown)
	if errors.Is(err, syscall.ENOENT) {
		if _, derr := d.b.xs.Directory(d.path); derr == nil {
			return false // the toolstack has not written the keys yet
		}
		d.log.Info("backend directory removed")
		return true
	}
	if err != nil {
		d.log.Error("reading configuration", "err", err)
		return false
	}
	d.key = cfg.state
	if d.state == blkif.StateUnknown && cfg.state == blkif.StateConnected && d.adopt() {
		return false
	}
	if d.state == blkif.StateUnknown {
		if err := d.start(cfg); err != nil {
			d.log.Error("publishing features", "err", err)
		}
		return false
	}
	fe := d.frontendState()
	if d.conn != nil && d.conn.broken() {
		d.log.Warn("frontend broke the ring protocol: disconnecting")
		d.disconnect()
		d.setState(blkif.StateClosing)
		return false
	}
	// The toolstack asks for a close by writing Closing into our state
	// (xl block-detach, xl destroy); so does a frontend going Closing.
	if cfg.state == blkif.StateClosing && d.state != blkif.StateClosing || fe == blkif.StateClosing {
		d.disconnect()
		if fe == blkif.StateClosed || fe == blkif.StateUnknown {
			d.setState(blkif.StateClosed)
		} else {
			d.setState(blkif.StateClosing)
		}
		return false
	}
	switch fe {
	case blkif.StateClosed, blkif.StateUnknown:
		// Frontend closed, or its domain is gone with its directory.
		if d.conn != nil || d.state == blkif.StateConnected || d.state == blkif.StateClosing {
			d.disconnect()
			d.setState(blkif.StateClosed)
		}
	case blkif.StateInitialising, blkif.StateInitWait:
		// A frontend starting (again) after a close or a reset:
		// offer the device again unless the toolstack is removing it.
		if (d.state == blkif.StateClosed || d.state == blkif.StateConnected) && cfg.online {
			d.disconnect()
			d.setState(blkif.StateInitWait)
		}
	case blkif.StateInitialised, blkif.StateConnected:
		if d.state == blkif.StateInitWait {
			if cfg, err = d.readConfig(true); err == nil {
				if r := d.b.opts.Ready; r != nil && !r(cfg.params, d.poke) {
					d.log.Info("waiting for the image's file system to be mounted", "params", cfg.params)
					return false
				}
				err = d.connect(cfg, false)
			}
			if err != nil {
				d.fatal(err, "connecting")
				return false
			}
			d.clearError()
			d.setState(blkif.StateConnected)
		}
	}
	if d.state == blkif.StateClosed && !cfg.online && d.b.removeClosed && d.removable(fe) {
		// A driver domain's own hotplug daemon (xl devd) removes a
		// detached device's backend directory: libxl in dom0 waits for
		// Closed, then for that removal (only then does it remove the
		// frontend's directory).
		if err := d.b.xs.Rm(d.path); err != nil {
			d.log.Error("removing the detached device", "err", err)
			return false
		}
		d.log.Info("detached: backend directory removed")
		return true
	}
	return false
}

// removeGrace is how long a detached device's backend directory stays
// after Closed while its frontend is still there: libxl must read Closed
// before the directory goes, or it fails the detach ("wanted state 6 but
// it was removed").
const removeGrace = 2 * time.Second

// removable says whether a Closed, detached device's directory may go: at
// once when the frontend is gone (xl destroy), else removeGrace after
// Closed, when a timer pokes the device again.
func (d *device) removable(fe int) bool {
	if fe == blkif.StateUnknown {
		return true
	}
	if d.closedAt.IsZero() {
		d.closedAt = time.Now()
		time.AfterFunc(removeGrace, d.poke)
		return false
	}
	return time.Since(d.closedAt) >= removeGrace
}

// start publishes what the backend offers and waits for the frontend:
// the features, then InitWait, in one transaction so a frontend never sees
// InitWait without them.
func (d *device) start(cfg config) error {
	if cfg.frontend == "" {
		return errors.New("no frontend key")
	}
	d.fePath = cfg.frontend
	if err := d.watchFrontend(); err != nil {
		return err
	}
	si, err := probeStore(cfg.params)
	if err != nil {
		d.log.Warn("cannot examine the image yet; offering no discard", "err", err)
	}
	features := d.b.features(cfg, si)
	err = d.b.xs.Transaction(func(tx *xs.Tx) error {
		for _, kv := range features {
			if err := tx.Write(d.path+"/"+kv.key, kv.value); err != nil {
				return err
			}
		}
		return tx.Write(d.path+"/state", strconv.Itoa(blkif.StateInitWait))
	})
	if err != nil {
		return err
	}
	d.state, d.key = blkif.StateInitWait, blkif.StateInitWait
	d.log.Info("waiting for the frontend", "frontend", d.fePath, "params", cfg.params)
	return nil
}

// watchFrontend pokes the device whenever the frontend's state changes.
func (d *device) watchFrontend() error {
	w, err := d.b.xs.Watch(d.fePath+"/state", "fe:"+d.path, func(string) { d.poke() })
	if err != nil {
		return fmt.Errorf("watching the frontend: %w", err)
	}
	d.feWatch = w
	return nil
}

// adopt takes over a connection that a predecessor made, and says whether
// it did: the backend's state is Connected (this process did not write
// it) and so is the frontend's. The frontend's rings, grants and event
// channels are all in xenstore and stay valid; its event channels' ports
// went back to unbound for this domain when the predecessor's handles
// were closed (Xen's evtchn_close, also on kill -9), so they bind again.
// Each ring goes on where its ledger says (see ledger), and the image is
// opened again: the handshake happened. Nothing is written to the
// frontend's view: the state stays Connected. A connection that cannot be
// adopted is failed (Closing) as a connect would be; the frontend then
// reconnects or gives up as its driver does.
func (d *device) adopt() bool {
	cfg, err := d.readConfig(true)
	if err != nil || cfg.frontend == "" {
		return false
	}
	d.fePath = cfg.frontend
	if d.frontendState() != blkif.StateConnected {
		return false // a handshake to finish: start
	}
	d.state, d.key = blkif.StateConnected, blkif.StateConnected
	if err := d.watchFrontend(); err != nil {
		d.fatal(err, "adopting the connection")
		return true
	}
	if err := d.connect(cfg, true); err != nil {
		d.fatal(err, "adopting the connection")
		return true
	}
	again := 0
	for _, r := range d.conn.rings {
		again += r.resumed
	}
	d.log.Info("adopted a connected frontend", "frontend", d.fePath, "served-again", again)
	return true
}

func (d *device) unwatch() {
	if d.feWatch != nil {
		d.feWatch.Close()
		d.feWatch = nil
	}
}

// setState writes the backend's state key if it changes, or if someone
// else wrote the key since (a toolstack's Closing that lands after this
// backend closed is answered with Closed again).
func (d *device) setState(s int) {
	if d.state == s && d.key == s {
		return
	}
	if err := d.b.xs.Write(d.path+"/state", strconv.Itoa(s)); err != nil && !errors.Is(err, syscall.ENOENT) {
		d.log.Error("writing state", "state", s, "err", err)
		return
	}
	d.log.Info("state", "state", stateName(s))
	d.state, d.key = s, s
}

// fatal reports why the device cannot go on, as Linux's xenbus_dev_fatal
// does: in the log, in the node error/<backend path>/error under this
// domain's home ("<errno> <what>: <err>", which the toolstack shows), and
// by moving to Closing.
func (d *device) fatal(err error, what string) {
	d.log.Error(what, "err", err)
	errno := syscall.EINVAL
	errors.As(err, &errno)
	msg := fmt.Sprintf("%d %s: %v", int(errno), what, err)
	if err := d.b.xs.Write(d.errorPath(), msg); err != nil {
		d.log.Warn("writing the error node", "err", err)
	} else {
		d.errored = true
	}
	d.setState(blkif.StateClosing)
}

// clearError removes the error node once the device connects or goes away.
func (d *device) clearError() {
	if !d.errored {
		return
	}
	p := strings.TrimSuffix(d.errorPath(), "/error")
	if err := d.b.xs.Rm(p); err != nil && !errors.Is(err, syscall.ENOENT) {
		d.log.Warn("removing the error node", "err", err)
		return
	}
	d.errored = false
}

// errorPath is error/<backend path relative to the home>/error, where
// Linux's xenbus writes a device's error.
func (d *device) errorPath() string {
	return d.b.home + "/error/" + strings.TrimPrefix(d.path, d.b.home+"/") + "/error"
}

// readConfig reads the toolstack's keys from the backend directory: with
// full, all of them (before publishing features, and again before
// connecting); otherwise only the ones that drive the state machine, so a
// wakeup costs three xenstore round trips, which matters when each takes
// milliseconds.
func (d *device) readConfig(full bool) (config, error) {
	var cfg config
	var err error
	read := func(key string, required bool) string {
		if err != nil {
			return ""
		}
		var v string
		v, err = d.b.xs.Read(d.path + "/" + key)
		if errors.Is(err, syscall.ENOENT) && !required {
			err = nil
		}
		return v
	}
	cfg.state, _ = strconv.Atoi(read("state", true))
	cfg.online = read("online", false) != "0"
	if full {
		cfg.frontend = read("frontend", true)
		cfg.params = read("params", false)
		cfg.readOnly = read("mode", false) == "r"
		cfg.cdrom = read("device-type", false) == "cdrom"
		cfg.directIO = read("direct-io-safe", false) == "1"
		cfg.discardEnable = read("discard-enable", false) != "0"
		cfg.cache = read("blkdom-cache", false)
	}
	return cfg, err
}

// frontendState reads the frontend's state; a missing or garbled key reads
// as Unknown, as does a frontend domain that is gone.
func (d *device) frontendState() int {
	v, err := d.b.xs.Read(d.fePath + "/state")
	if err != nil {
		return blkif.StateUnknown
	}
	s, err := strconv.Atoi(v)
	if err != nil || s < blkif.StateUnknown || s > blkif.StateClosed {
		return blkif.StateUnknown
	}
	return s
}

// connection is a connected frontend: its rings and the open image.
type connection struct {
	img   *image
	geo   *geometry
	rings []*ring
	// fault is set by a ring whose frontend broke the protocol.
	fault chan error
	// stopResize ends the resize watcher; resizeDone says it has.
	stopResize, resizeDone chan struct{}
}

func (c *connection) broken() bool { return len(c.fault) > 0 }

// connect reads the frontend's transport keys, maps its rings and binds
// their event channels, and only then opens the image; it then publishes
// the disk's geometry. With adopt, the rings are a predecessor's (see
// adopt). On error nothing is left mapped, bound or open.
func (d *device) connect(cfg config, adopt bool) error {
	if cfg.params == "" {
		return errors.New("no params key")
	}
	t, err := d.readTransport()
	if err != nil {
		return err
	}
	si, err := probeStore(cfg.params)
	if err != nil {
		return fmt.Errorf("image %s: %w", cfg.params, err)
	}
	policy, why := d.b.policy(d.path, cfg, si)
	c := &connection{fault: make(chan error, 1), geo: &geometry{
		sectorSize: si.sectorSize, readOnly: cfg.readOnly, maxSegments: blkif.MaxDirectSegments,
		discard: d.b.discardOffered(cfg, si), secure: si.discardSecure}}
	if d.b.opts.MaxIndirectSegments > blkif.MaxDirectSegments {
		c.geo.maxSegments = d.b.opts.MaxIndirectSegments
	}
	persistent := 0
	if t.persistent {
		persistent = d.b.opts.PersistentGrants
	}
	for i, q := range t.queues {
		if err := c.addRing(d, t.abi, q, policy, persistent, d.ledgerPath(i), adopt); err != nil {
			c.releaseRings(d.log)
			return err
		}
	}
	// The handshake is done: now, and not before, open the image.
	img, err := openImage(cfg.params, cfg.readOnly, policy != policyBuffered, si)
	if err != nil {
		c.releaseRings(d.log)
		return err
	}
	if policy == policyDirect && !img.direct.Load() {
		policy, why = policyBuffered, "the file system refuses O_DIRECT"
	}
	sectors, err := img.sectors()
	if err != nil {
		img.close()
		c.releaseRings(d.log)
		return err
	}
	c.geo.sectors.Store(sectors)
	if err := d.publishGeometry(cfg, c.geo, si, policy); err != nil {
		img.close()
		c.releaseRings(d.log)
		return err
	}
	c.img = img
	engine := ""
	for _, r := range c.rings {
		r.policy = policy
		if why := r.start(img); why != nil {
			d.log.Warn("I/O engine "+d.b.opts.Engine+" unavailable: using "+r.io.name(), "why", why)
		}
		engine = r.io.name()
	}
	c.stopResize, c.resizeDone = make(chan struct{}), make(chan struct{})
	go d.watchSize(c)
	d.conn = c
	d.b.publishSoon(d)
	d.log.Info("connected", "image", cfg.params, "sectors", sectors, "cache", policy.String(), "why", why,
		"engine", engine, "protocol", t.abi.Name, "queues", len(t.queues), "ring-pages", len(t.queues[0].refs),
		"persistent", persistent > 0, "max-segments", c.geo.maxSegments)
	return nil
}

// ledgerPath is the file of queue i's ledger, "" without a StateDir.
func (d *device) ledgerPath(i int) string {
	if d.b.opts.StateDir == "" {
		return ""
	}
	return filepath.Join(d.b.opts.StateDir, fmt.Sprintf("vbd-%d-%s-%d", d.feDom, d.devid, i))
}

// addRing maps one queue's ring and binds its event channel.
func (c *connection) addRing(d *device, abi blkif.ABI, q queue, policy cachePolicy, persistent int, ledger string, adopt bool) error {
	grants, err := d.b.platform.OpenGrants()
	if err != nil {
		return err
	}
	events, err := d.b.platform.OpenEvents()
	if err != nil {
		grants.Close()
		return err
	}
	p := ringParams{
		dom: d.feDom, disk: d.id, probes: d.b.opts.Probes, abi: abi, refs: q.refs, port: q.port, geo: c.geo,
		engine: d.b.opts.Engine, workers: d.b.opts.Workers, pollTime: d.b.opts.PollTime,
		stats: &d.stats, policy: policy, persistent: persistent, ledger: ledger, adopt: adopt,
		failed: func(err error) {
			select {
			case c.fault <- err:
			default:
			}
			d.poke()
		},
	}
	r, err := newRing(p, grants, events)
	if err != nil {
		grants.Close()
		events.Close()
		return err
	}
	c.rings = append(c.rings, r)
	return nil
}

// releaseRings unmaps and unbinds rings that never started.
func (c *connection) releaseRings(log *slog.Logger) {
	for _, r := range c.rings {
		if err := r.release(); err != nil {
			log.Warn("releasing a ring", "err", err)
		}
	}
	c.rings = nil
}

// publishGeometry writes sectors, info, the sector sizes and the cache
// policy in force (PolicyKey) in one transaction.
func (d *device) publishGeometry(cfg config, geo *geometry, si storeInfo, policy cachePolicy) error {
	info := 0
	if cfg.readOnly {
		info |= blkif.InfoReadOnly
	}
	if cfg.cdrom {
		info |= blkif.InfoCDROM
	}
	phys := max(geo.sectorSize, si.physSectorSize)
	return d.b.xs.Transaction(func(tx *xs.Tx) error {
		for _, kv := range [...]struct{ k, v string }{
			{"sectors", strconv.FormatUint(geo.sectors.Load(), 10)},
			{"info", strconv.Itoa(info)},
			{"sector-size", strconv.FormatUint(uint64(geo.sectorSize), 10)},
			{"physical-sector-size", strconv.FormatUint(uint64(phys), 10)},
			{PolicyKey, policy.String()},
		} {
			if err := tx.Write(d.path+"/"+kv.k, kv.v); err != nil {
				return err
			}
		}
		return nil
	})
}

// watchSize notices the image growing (a file extended, a device
// resized) while connected and tells the frontend: new sectors first,
// then the state rewritten so its watch fires.
func (d *device) watchSize(c *connection) {
	defer close(c.resizeDone)
	tick := time.NewTicker(d.b.opts.ResizeInterval)
	defer tick.Stop()
	for {
		select {
		case <-c.stopResize:
			return
		case <-tick.C:
		}
		now, err := c.img.sectors()
		if err != nil || now <= c.geo.sectors.Load() {
			continue
		}
		c.geo.sectors.Store(now)
		d.log.Info("image grew", "sectors", now)
		if err := d.b.xs.Write(d.path+"/sectors", strconv.FormatUint(now, 10)); err != nil {
			d.log.Error("publishing the new size", "err", err)
			continue
		}
		if err := d.b.xs.Write(d.path+"/state", strconv.Itoa(blkif.StateConnected)); err != nil {
			d.log.Error("rewriting state after a resize", "err", err)
		}
	}
}

// queue is one ring the frontend set up.
type queue struct {
	refs []gnttab.Ref
	port evtchn.Port
}

// transport is what the frontend published for its rings.
type transport struct {
	abi        blkif.ABI
	queues     []queue
	persistent bool // the frontend wants persistent grants
}

// readTransport reads and checks the frontend's ring keys (see
// parseTransport) from xenstore.
func (d *device) readTransport() (transport, error) {
	return parseTransport(d.b.xs.Read, d.fePath, d.b.opts.MaxQueues, d.b.opts.MaxRingPageOrder)
}

// parseTransport reads and checks a frontend's ring keys through read
// (which returns ENOENT for an absent key): one ring at the top level, or
// multi-queue-num-queues rings under queue-N/, each of one page (ring-ref)
// or 2^ring-page-order pages (ring-ref0...). They are guest-written: every
// value is parsed strictly and bounded by what the backend offered
// (maxQueues, maxOrder).
func parseTransport(read func(string) (string, error), fePath string, maxQueues, maxOrder int) (transport, error) {
	var t transport
	k := keys{read}
	protocol, err := k.optional(fePath + "/protocol")
	if err != nil {
		return t, err
	}
	if t.abi, err = blkif.ABIFor(protocol); err != nil {
		return t, fmt.Errorf("unsupported protocol %s", bounded(protocol))
	}
	nq, err := k.optionalUint(fePath+"/multi-queue-num-queues", 1)
	if err != nil {
		return t, err
	}
	if nq < 1 || nq > uint64(maxQueues) {
		return t, fmt.Errorf("frontend asks for %d queues, %d offered", nq, maxQueues)
	}
	// Without ring-page-order the ring is one page named by ring-ref.
	orderKey, err := k.optional(fePath + "/ring-page-order")
	if err != nil {
		return t, err
	}
	var order uint64
	if orderKey != "" {
		if order, err = parseKey(fePath+"/ring-page-order", orderKey, 32); err != nil {
			return t, err
		}
	}
	if order > uint64(maxOrder) {
		return t, fmt.Errorf("frontend asks for ring-page-order %d, %d offered", order, maxOrder)
	}
	for q := range nq {
		dir := fePath
		if nq > 1 {
			dir = fmt.Sprintf("%s/queue-%d", fePath, q)
		}
		var qu queue
		port, err := k.uint(dir+"/event-channel", 32)
		if err != nil {
			return t, err
		}
		qu.port = evtchn.Port(port)
		if orderKey == "" {
			ref, err := k.uint(dir+"/ring-ref", 32)
			if err != nil {
				return t, err
			}
			qu.refs = []gnttab.Ref{gnttab.Ref(ref)}
		} else {
			for i := range 1 << order {
				ref, err := k.uint(fmt.Sprintf("%s/ring-ref%d", dir, i), 32)
				if err != nil {
					return t, err
				}
				qu.refs = append(qu.refs, gnttab.Ref(ref))
			}
		}
		t.queues = append(t.queues, qu)
	}
	persistent, err := k.optionalUint(fePath+"/feature-persistent", 0)
	if err != nil {
		return t, err
	}
	t.persistent = persistent == 1
	return t, nil
}

// keys reads guest-written xenstore keys strictly.
type keys struct{ read func(string) (string, error) }

// optional reads a key that may be absent ("" then).
func (k keys) optional(path string) (string, error) {
	v, err := k.read(path)
	if errors.Is(err, syscall.ENOENT) {
		return "", nil
	}
	return v, err
}

// optionalUint reads a decimal key that may be absent (def then).
func (k keys) optionalUint(path string, def uint64) (uint64, error) {
	v, err := k.optional(path)
	if err != nil || v == "" {
		return def, err
	}
	return parseKey(path, v, 32)
}

// uint reads a decimal key of at most bits bits.
func (k keys) uint(path string, bits int) (uint64, error) {
	v, err := k.read(path)
	if err != nil {
		return 0, err
	}
	return parseKey(path, v, bits)
}

// parseKey parses a guest-written decimal of at most bits bits; an error
// names the key and the value, bounded.
func parseKey(path, v string, bits int) (uint64, error) {
	n, err := strconv.ParseUint(v, 10, bits)
	if err != nil {
		return 0, fmt.Errorf("%s = %s: not a %d-bit number", path, bounded(v), bits)
	}
	return n, nil
}

// disconnect drains every ring's in-flight I/O, flushes and closes the
// image, then unmaps the rings and unbinds their event channels.
func (d *device) disconnect() {
	c := d.conn
	if c == nil {
		return
	}
	d.conn = nil
	close(c.stopResize)
	<-c.resizeDone
	for _, r := range c.rings {
		if err := r.quiesce(); err != nil {
			d.log.Warn("ring stopped", "err", err)
		}
	}
	if err := c.img.flush(); err != nil {
		d.log.Error("flushing the image", "err", err)
	}
	if err := c.img.close(); err != nil {
		d.log.Error("closing the image", "err", err)
	}
	for _, r := range c.rings {
		if err := r.release(); err != nil {
			d.log.Warn("releasing the ring", "err", err)
		}
	}
	d.log.Info("disconnected")
}

// abandon drops the connection as a killed process would (ErrAbandon):
// each ring stops where it stands and its handles are closed, its ledger
// stays, and the image is closed unflushed.
func (d *device) abandon() {
	c := d.conn
	if c == nil {
		return
	}
	d.conn = nil
	close(c.stopResize)
	<-c.resizeDone
	left := 0
	for _, r := range c.rings {
		n, err := r.abandon()
		if err != nil {
			d.log.Warn("abandoning the ring", "err", err)
		}
		left += n
	}
	c.img.close()
	d.log.Info("abandoned", "unanswered", left)
}

// physicalDevice is the "physical-device" value for a block device image:
// major:minor in hex, as Linux's hotplug scripts write it. It stats the
// path without opening it.
func physicalDevice(path string) (string, bool) {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", false
	}
	return fmt.Sprintf("%x:%x", unix.Major(st.Rdev), unix.Minor(st.Rdev)), true
}

func stateName(s int) string {
	names := [...]string{"Unknown", "Initialising", "InitWait", "Initialised", "Connected", "Closing", "Closed"}
	if s >= 0 && s < len(names) {
		return names[s]
	}
	return strconv.Itoa(s)
}
