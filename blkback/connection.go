package blkback

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"time"

	"blkdom/blkif"
	"blkdom/xs"
)

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
func (d *device) connect(cfg config, adopt bool) (err error) {
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
	var img *image
	defer func() {
		if err == nil {
			return
		}
		if img != nil {
			img.close()
		}
		c.releaseRings(d.log)
	}()
	persistent := 0
	if t.persistent {
		persistent = d.b.opts.PersistentGrants
	}
	for i, q := range t.queues {
		if err := c.addRing(d, t.abi, q, policy, persistent, d.ledgerPath(i), adopt); err != nil {
			return err
		}
	}
	// The handshake is done: now, and not before, open the image.
	img, err = openImage(cfg.params, cfg.readOnly, policy != policyBuffered, si)
	if err != nil {
		return err
	}
	if policy == policyDirect && !img.direct.Load() {
		policy, why = policyBuffered, "the file system refuses O_DIRECT"
	}
	sectors, err := img.sectors()
	if err != nil {
		return err
	}
	c.geo.sectors.Store(sectors)
	if err := d.publishGeometry(cfg, c.geo, si, policy); err != nil {
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
func (c *connection) addRing(d *device, abi blkif.ABI, q queue, policy cachePolicy, persistent int, ledger string, adopt bool) (err error) {
	grants, err := d.b.platform.OpenGrants()
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			grants.Close()
		}
	}()
	events, err := d.b.platform.OpenEvents()
	if err != nil {
		return err
	}
	p := ringParams{
		dom: d.feDom, disk: d.id, probes: d.b.opts.Probes, abi: abi, refs: q.refs, port: q.port, geo: c.geo,
		engine: d.b.opts.Engine, workers: d.b.opts.Workers, pollTime: d.b.opts.PollTime,
		stats: &d.stats, policy: policy, persistent: persistent, ledger: ledger, adopt: adopt, log: d.log,
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

// publishGeometry writes sectors, info, the sector sizes, the features
// read at connect (connectFeatures) and the cache policy in force
// (PolicyKey) in one transaction.
func (d *device) publishGeometry(cfg config, geo *geometry, si storeInfo, policy cachePolicy) error {
	info := 0
	if cfg.readOnly {
		info |= blkif.InfoReadOnly
	}
	if cfg.cdrom {
		info |= blkif.InfoCDROM
	}
	phys := max(geo.sectorSize, si.physSectorSize)
	keys := append([]feature{
		{"sectors", strconv.FormatUint(geo.sectors.Load(), 10)},
		{"info", strconv.Itoa(info)},
		{"sector-size", strconv.FormatUint(uint64(geo.sectorSize), 10)},
		{"physical-sector-size", strconv.FormatUint(uint64(phys), 10)},
		{PolicyKey, policy.String()},
	}, d.b.connectFeatures(cfg, si)...)
	return d.b.xs.Transaction(func(tx *xs.Tx) error {
		for _, kv := range keys {
			if err := tx.Write(d.path+"/"+kv.key, kv.value); err != nil {
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

// detach takes the device's connection, if it has one, and stops its
// resize watcher: the first step of disconnect and of abandon.
func (d *device) detach() *connection {
	c := d.conn
	if c == nil {
		return nil
	}
	d.conn = nil
	close(c.stopResize)
	<-c.resizeDone
	return c
}

// disconnect drains every ring's in-flight I/O, flushes and closes the
// image, then unmaps the rings and unbinds their event channels.
func (d *device) disconnect() {
	c := d.detach()
	if c == nil {
		return
	}
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
	c := d.detach()
	if c == nil {
		return
	}
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
