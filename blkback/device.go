package blkback

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"blkdom/blkif"
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
	found time.Time // when the watch showed it first

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
	var cfg config
	var err error
	var published []feature
	var looked time.Time
	if d.state == blkif.StateUnknown {
		// A new device: its features go out with the first reads (see
		// start).
		looked = time.Now()
		published = d.b.features()
		cfg, err = d.readConfig(startKeys, published)
	} else {
		cfg, err = d.readConfig(stateKeys, nil)
	}
	if errors.Is(err, syscall.ENOENT) {
		names, derr := d.b.xs.Directory(d.path)
		if derr == nil && (len(published) == 0 || !onlyKeys(names, published)) {
			return false // the toolstack has not written the keys yet
		}
		if derr == nil {
			// The toolstack removed the directory as the features went
			// out, and they made it again: remove it once more.
			if err := d.b.xs.Rm(d.path); err != nil && !errors.Is(err, syscall.ENOENT) {
				d.log.Warn("removing the features of a removed device", "err", err)
			}
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
		if err := d.start(cfg, looked); err != nil {
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
			if cfg, err = d.readConfig(allKeys, nil); err == nil {
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

// start waits for the frontend: InitWait, with the hotplug status and the
// frontend watch side by side. The features a frontend reads before it connects went out with
// the device's first reads (reconcile), so a frontend never sees InitWait
// without them; the watch fires once when it is set, so a frontend that
// moved meanwhile is not missed. The rest (flush, barrier, discard, the
// physical device) is published at connect, as Linux blkback does:
// frontends read it then, and learning what a store allows takes long in
// a PV domain (a block device's sysfs: 70-100 ms under emulation). No
// transaction: the three requests go side by side on the xenbus lanes.
// looked is when the first look (reconcile's reads) began.
func (d *device) start(cfg config, looked time.Time) error {
	t0 := time.Now()
	if cfg.frontend == "" {
		return errors.New("no frontend key")
	}
	d.fePath = cfg.frontend
	var initWait time.Time // when xenstore answered the write of InitWait
	err := sideBySide(3, func(i int) error {
		switch i {
		case 0:
			err := d.b.xs.Write(d.path+"/state", strconv.Itoa(blkif.StateInitWait))
			initWait = time.Now()
			return err
		case 1:
			return d.b.xs.Write(d.path+"/"+hotplugStatus.key, hotplugStatus.value)
		}
		return d.watchFrontend()
	})
	if err != nil {
		return err
	}
	d.state, d.key = blkif.StateInitWait, blkif.StateInitWait
	d.log.Info("waiting for the frontend", "frontend", d.fePath,
		// From found to xenstore's answer to the write of InitWait
		// (the e2e harness's vbd_to_initwait), and of that the first
		// look (reads and features) and the last step to that answer;
		// the rest is the wait before the first look. step is the whole
		// last step: the hotplug status and the frontend watch beside
		// InitWait may be answered later.
		"took", fmt.Sprintf("%.3f", initWait.Sub(d.found).Seconds()),
		"look", fmt.Sprintf("%.3f", t0.Sub(looked).Seconds()),
		"state", fmt.Sprintf("%.3f", initWait.Sub(t0).Seconds()),
		"step", fmt.Sprintf("%.3f", time.Since(t0).Seconds()))
	return nil
}

// onlyKeys says whether every name is one of fs's keys.
func onlyKeys(names []string, fs []feature) bool {
	return !slices.ContainsFunc(names, func(n string) bool {
		return !slices.ContainsFunc(fs, func(f feature) bool { return f.key == n })
	})
}

// sideBySide runs f(0) to f(n-1) at once and returns the first error in
// index order. For independent xenstore requests: on a socket they
// pipeline, on the xenbus device xs spreads them over its lanes, so n of
// them cost about one round trip instead of n.
func sideBySide(n int, f func(i int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = f(i) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
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
	cfg, err := d.readConfig(allKeys, nil)
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
	again, kept, waiting := 0, 0, uint32(0)
	for _, r := range d.conn.rings {
		again += r.resumed
		waiting += r.waiting
		if r.kept {
			kept++
		}
	}
	d.log.Info("adopted a connected frontend", "frontend", d.fePath, "served-again", again,
		"ledgers", kept, "waiting", waiting)
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
	d.log.Info("state", "state", blkif.StateName(s))
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

// keySet says which of the toolstack's keys readConfig reads.
type keySet int

const (
	stateKeys keySet = iota // state and online: what drives the state machine
	startKeys               // state and frontend: enough to wait for the frontend
	allKeys                 // every key, all that connecting needs
)

// The toolstack's keys readConfig reads, by index in configKeys.
const (
	keyState = iota
	keyOnline
	keyFrontend
	keyParams
	keyMode
	keyDeviceType
	keyDirectIOSafe
	keyDiscardEnable
	keyCache
	numConfigKeys
)

var configKeys = [numConfigKeys]string{
	keyState: "state", keyOnline: "online", keyFrontend: "frontend", keyParams: "params",
	keyMode: "mode", keyDeviceType: "device-type", keyDirectIOSafe: "direct-io-safe",
	keyDiscardEnable: "discard-enable", keyCache: "blkdom-cache",
}

// setKeys are each set's keys (allKeys: every one). A new device's first
// look does without online: a key not read counts as online, and until the
// device waits for its frontend nothing depends on it.
var setKeys = [...][]int{
	stateKeys: {keyState, keyOnline},
	startKeys: {keyState, keyFrontend},
	allKeys: func() []int {
		all := make([]int, numConfigKeys)
		for k := range all {
			all[k] = k
		}
		return all
	}(),
}

// readConfig reads the toolstack's keys in set from the backend directory,
// and writes the publish keys meanwhile. The requests are independent:
// side by side they cost about one round trip, not one each, and few keys
// cost less than many (in a PV domain under emulation each message to and
// from xenstore costs about 5 ms of the domain's time).
func (d *device) readConfig(set keySet, publish []feature) (config, error) {
	keys := setKeys[set]
	vals := make([]string, len(configKeys))
	err := sideBySide(len(keys)+len(publish), func(i int) error {
		if i >= len(keys) {
			f := publish[i-len(keys)]
			return d.b.xs.Write(d.path+"/"+f.key, f.value)
		}
		k := keys[i]
		v, err := d.b.xs.Read(d.path + "/" + configKeys[k])
		if errors.Is(err, syscall.ENOENT) && k != keyState && k != keyFrontend {
			err = nil // optional
		}
		vals[k] = v
		return err
	})
	if err != nil {
		return config{}, err
	}
	var cfg config
	cfg.state, _ = strconv.Atoi(vals[keyState])
	cfg.online = vals[keyOnline] != "0"
	cfg.frontend = vals[keyFrontend]
	cfg.params = vals[keyParams]
	cfg.readOnly = vals[keyMode] == "r"
	cfg.cdrom = vals[keyDeviceType] == "cdrom"
	cfg.directIO = vals[keyDirectIOSafe] == "1"
	cfg.discardEnable = vals[keyDiscardEnable] != "0"
	cfg.cache = vals[keyCache]
	return cfg, nil
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
