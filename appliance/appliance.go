// Package appliance is blkdom as PID 1 of a storage driver domain: it
// brings the minimal machine up (file systems, console, kernel modules),
// applies blkdom's own xenstore configuration (log level, default cache
// policy, file systems to mount), runs the backend the caller hands it,
// and stops the machine in order when asked to.
//
// It does not serve disks (package blkback does, through the serve
// function given to Run), and it does not build the image it boots from
// (package initramfs does).
package appliance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"blkdom/blkback"
	"blkdom/kmodule"
	"blkdom/xs"
)

// Serve serves disks until ctx is done, then closes them all (every
// backend at Closed, every image flushed and closed) and returns.
type Serve func(ctx context.Context, h *Host) error

// Host is what Run hands Serve.
type Host struct {
	// XS is the driver domain's xenstore connection. Run closes it after
	// Serve has returned.
	XS *xs.Client
	// Log writes to the console and the kernel log; its level follows
	// blkdom/log-level.
	Log      *slog.Logger
	cfg      *atomic.Pointer[Config]
	mounts   *mountSet
	rest     func()
	upgrades chan string
}

// Config returns blkdom's configuration as last read from xenstore.
func (h *Host) Config() Config { return *h.cfg.Load() }

// Serving tells Run that serve watches its vbds: the rest of the
// start-up (the other modules, xenfs, the network, the mounts) begins.
func (h *Host) Serving() { h.rest() }

// Ready says whether the file system that holds path (an image) is up:
// false while path lies on a configured mount that is still being tried
// (an NFS server not answering yet), in which case wake is called once,
// when it is mounted or leaves the configuration.
func (h *Host) Ready(path string, wake func()) bool { return h.mounts.ready(path, wake) }

// NoXenArg is the kernel command-line parameter that says what to do
// without Xen: by default the machine powers off at once; with
// "blkdom.noxen=wait" it waits for a stop request (Ctrl-Alt-Del reboots),
// for trying the image under plain QEMU or KVM.
const NoXenArg = "blkdom.noxen"

// StopTimeout is how long a stop waits for Serve to close every disk
// before it powers off anyway.
const StopTimeout = 60 * time.Second

// Run is PID 1. It never returns: it ends by powering off or rebooting.
// It brings up first what serving needs, then serves, and does the rest
// meanwhile, so that a new vbd is answered as early as possible:
//
//  1. takes SIGTERM and SIGPWR (stop, power off) and SIGINT (stop, reboot);
//  2. mounts proc, sysfs, devtmpfs, devpts, and tmpfs on /run and /tmp,
//     each unless already mounted;
//  3. logs to /dev/console and to the kernel log (/dev/kmsg);
//  4. turns Ctrl-Alt-Del into SIGINT and sets the kernel's poweroff_cmd to
//     "<itself> poweroff", so Xen's reboot, poweroff and halt requests
//     arrive as signals;
//  5. reaps orphaned processes from now on;
//  6. loads the modules serving needs (ServingModules, with what they
//     need) from /lib/modules/<release>;
//  7. mounts bpffs on /sys/fs/bpf and tracefs on /sys/kernel/tracing,
//     where the kernel has them;
//  8. looks for Xen, and without it says so and powers off (or, with
//     blkdom.noxen=wait on the kernel command line, waits for a stop);
//  9. connects to xenstore and reads blkdom's configuration (Config);
//  10. logs how long each step took ("start-up") and runs serve, with
//     the disks on the configured mounts held in InitWait until they are
//     mounted;
//  11. once serve says it serves (Host.Serving): loads the other modules
//     of modules.dep, each after the modules it needs, in the file's
//     order; then mounts xenfs on /proc/xen, brings the configured network
//     interfaces up, mounts the configured file systems, and watches the
//     configuration for changes. (A driver domain has one CPU: done
//     earlier, this work would delay serving.)
//  12. to stop: cancels serve's context and waits for serve to return
//     (StopTimeout at most), unmounts the configured file systems,
//     closes xenstore, syncs, and powers off or reboots.
//
// A PID 1 exec'd by another (an upgrade in place: blkdom/upgrade, see
// upgrade.go) runs the same steps but loads no module, leaves the kernel's
// stop requests to the first binary, and takes the configured mounts and
// network as it finds them; its serve adopts every ring.
//
// A panic in Run's own steps or in serve's goroutine is logged and ends in
// the orderly stop. A panic in a goroutine serve starts cannot be caught
// and takes the kernel with it: serve must not let one escape.
func Run(serve Serve) {
	m := &machine{start: time.Now(), stop: make(chan os.Signal, 4), served: make(chan error, 1),
		rest: make(chan struct{}), modulesDone: make(chan struct{}), upgrades: make(chan string),
		upgradeExe: upgradeExe, successor: os.Getenv(handOverEnv) == "1"}
	os.Setenv(handOverEnv, "1")
	m.level.Set(slog.LevelInfo)
	m.cfg.Store(&Config{LogLevel: slog.LevelInfo, Cache: blkback.CacheAuto})
	m.console.out = os.Stderr
	m.log = NewLogger(&m.console, &m.level)
	m.mounts.deviceWait = 10 * time.Second
	m.mounts.retry, m.mounts.retryMax = time.Second, 10*time.Second
	m.mounts.unmountWait = 10 * time.Second
	m.mounts.log = m.log.Info
	m.net.linkWait = 10 * time.Second
	m.net.loopback = true
	a := m.up(serve)
	m.down(a)
}

// ServingModules are the kernel modules serving needs (event channels and
// grant mapping; xenstore's /dev/xen/xenbus is built into the kernel):
// PID 1 loads them before anything else.
var ServingModules = []string{"xen-evtchn", "xen-gntdev"}

// machine is the state PID 1 keeps between booting and stopping.
type machine struct {
	start   time.Time // when Run began
	console console
	level   slog.LevelVar
	log     *slog.Logger
	stop    chan os.Signal
	cfg     atomic.Pointer[Config]
	mounts  mountSet
	net     netSet
	xs      *xs.Client
	cancel  context.CancelFunc // nil until serve runs
	served  chan error
	// rest is closed when the rest of the start-up may begin: serve
	// serves (Host.Serving), or there is nothing to serve, or restWait
	// has passed. modulesDone is closed when the modules loaded then are.
	rest        chan struct{}
	restOnce    sync.Once
	modulesDone chan struct{}
	// watchMu guards watch, which the background start-up sets, and
	// stopping, which tells it not to.
	watchMu  sync.Mutex
	watch    *xs.Watch
	stopping bool
	// successor: this PID 1 was exec'd by another (an upgrade in place),
	// which brought the machine up; upgrades takes a checked binary to
	// serve (Host.Upgrades); upgradeSeen is the last value of
	// blkdom/upgrade, a change of which asks for an upgrade.
	successor   bool
	upgrades    chan string
	upgradeExe  string // where a new binary is copied to
	upgradeSeen string
}

// up runs steps 1 to 10 and returns how the machine is to end.
func (m *machine) up(serve Serve) (a action) {
	defer func() {
		if r := recover(); r != nil {
			m.log.Error("panic", "panic", r, "stack", string(debug.Stack()))
			a = powerOff
		}
	}()
	notifyStop(m.stop)
	for _, fs := range earlyMounts {
		if _, err := fs.mount(); err != nil {
			m.log.Error("boot", "err", err)
		}
	}
	m.openConsole()
	exe, err := os.Executable()
	m.log.Info("blkdom is PID 1", "pid", os.Getpid(), "exe", exe, "successor", m.successor)
	switch {
	case m.successor: // the kernel's stop requests still run the first binary
	case err != nil:
		m.log.Error("no stop requests from the kernel", "err", err)
	default:
		if err := takeStopRequests(exe); err != nil {
			m.log.Error("stop requests from the kernel", "err", err)
		}
	}
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	go reapOrphans(sigchld)
	var steps startup
	steps.step("early", m.start) // mounts, console, signals: the Go runtime's own start is before it
	if m.successor {
		close(m.modulesDone) // loaded by the first PID 1
	} else {
		m.loadModules()
	}
	steps.step("modules", m.start)
	for _, fs := range lateMounts {
		if _, err := fs.mount(); err != nil {
			m.log.Debug("optional file system", "fs", fs.String(), "err", err)
		}
	}
	evidence, ok := detectXen("/")
	if !ok {
		m.startRest()
		<-m.modulesDone // their summary says what loaded
		if kernelArg("/proc/cmdline", NoXenArg) != "wait" {
			m.log.Warn("no Xen hypervisor: there are no guests to serve; powering off")
			return powerOff
		}
		m.log.Warn("no Xen hypervisor: waiting for a stop request (" + NoXenArg + "=wait)")
		return m.stopRequested(<-m.stop)
	}
	c, err := xs.Open()
	if err != nil {
		m.log.Error("no xenstore: powering off", "err", err)
		return powerOff
	}
	m.xs = c
	m.net.publish = m.publish
	m.mounts.publish = m.publish
	steps.step("xenstore", m.start)
	cfg, _ := m.loadConfig()
	m.upgradeSeen = cfg.Upgrade
	if m.successor {
		m.mounts.hold(m.mounts.adopt(cfg.Mounts))
		m.net.adopt(cfg.Net)
		m.publish("upgrade", "done", nil)
	} else {
		m.mounts.hold(cfg.Mounts)
	}
	steps.step("config", m.start)
	// One line, not one per step: each line is two writes to the Xen
	// console on the way to serving.
	m.log.Info("start-up", append(steps.attrs(), "xen", evidence)...)
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() {
		defer func() {
			if r := recover(); r != nil {
				m.served <- fmt.Errorf("panic: %v\n%s", r, debug.Stack())
			}
		}()
		m.served <- serve(ctx, &Host{XS: c, Log: m.log, cfg: &m.cfg, mounts: &m.mounts, rest: m.startRest,
			upgrades: m.upgrades})
	}()
	go m.settle()
	select {
	case s := <-m.stop:
		a = m.stopRequested(s)
	case err := <-m.served:
		m.served <- err // for down
		a = powerOff
		m.log.Error("serving stopped by itself; powering off", "err", err)
	}
	return a
}

// stopRequested logs the stop signal s and returns what it asks for.
func (m *machine) stopRequested(s os.Signal) action {
	a := stopSignals[s]
	m.log.Info("stop requested", "signal", s.String(), "then", a.String())
	return a
}

// down runs step 11 and ends the machine.
func (m *machine) down(a action) {
	defer func() {
		if r := recover(); r != nil {
			m.log.Error("panic while stopping", "panic", r, "stack", string(debug.Stack()))
			m.end(a)
		}
	}()
	if m.cancel != nil {
		m.cancel()
		select {
		case err := <-m.served:
			if err != nil && !errors.Is(err, context.Canceled) {
				m.log.Error("serve", "err", err)
			}
		case <-time.After(StopTimeout):
			m.log.Error("disks did not close in time; stopping anyway", "waited", StopTimeout)
		}
	}
	m.watchMu.Lock()
	m.stopping = true
	if m.watch != nil {
		m.watch.Close()
	}
	m.watchMu.Unlock()
	if err := m.mounts.close(); err != nil {
		m.log.Error("unmount", "err", err)
	}
	if m.xs != nil {
		m.xs.Close()
	}
	m.end(a)
}

// end powers off or reboots, and waits forever should the kernel refuse:
// PID 1 never exits.
func (m *machine) end(a action) {
	m.log.Info("stopped: " + a.String())
	err := end(a)
	m.log.Error("the kernel refused to "+a.String(), "err", err)
	for {
		time.Sleep(time.Hour)
	}
}

// openConsole moves the log to /dev/console and the kernel log; until
// then it goes to the console the kernel opened for init.
func (m *machine) openConsole() {
	out, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		m.log.Error("console", "err", err)
		return
	}
	// Our lines must not be rate limited away (the kernel's default for
	// /dev/kmsg writers): they are the domain's only log.
	os.WriteFile("/proc/sys/kernel/printk_devkmsg", []byte("on\n"), 0o644)
	kmsg, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	if err != nil {
		m.console.use(out, nil, 0)
		m.log.Error("kernel log", "err", err)
		return
	}
	m.console.use(out, kmsg, consoleLogLevel())
}

// consoleLogLevel is the kernel's console log level, the first field of
// /proc/sys/kernel/printk (0 if it cannot be read).
func consoleLogLevel() int {
	b, err := os.ReadFile("/proc/sys/kernel/printk")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(f[0])
	return n
}

// loadModules runs step 6: it loads ServingModules and starts the
// background loading of the others, which logs one line for what loaded
// and one for each module that did not, and closes m.modulesDone.
func (m *machine) loadModules() {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		m.log.Error("modules", "err", err)
		close(m.modulesDone)
		return
	}
	release := unix.ByteSliceToString(u.Release[:])
	l, err := kmodule.NewLoader(filepath.Join("/lib/modules", release))
	if err != nil {
		m.log.Warn("no modules loaded", "kernel", release, "err", err)
		close(m.modulesDone)
		return
	}
	var first []string
	for _, name := range ServingModules {
		if p, ok := l.Lookup(name); ok {
			first = append(first, p)
		}
	}
	l.Load(first) // the paths come from the tree: no error; failures show in the summary
	go func() {
		defer close(m.modulesDone)
		select {
		case <-m.rest:
		case <-time.After(restWait):
		}
		t0 := time.Now()
		loads, err := l.Load(l.Paths())
		if err != nil {
			m.log.Warn("modules not loaded", "kernel", release, "err", err)
			return
		}
		var loaded []string
		for _, r := range loads {
			if r.Err != nil {
				m.log.Warn("module not loaded", "module", r.Name, "err", r.Err)
				continue
			}
			loaded = append(loaded, r.Name)
		}
		m.log.Info(fmt.Sprintf("loaded %d of %d modules", len(loaded), len(loads)),
			"kernel", release, "took", seconds(time.Since(t0)), "modules", strings.Join(loaded, " "))
	}()
}

// restWait bounds how long the rest of the start-up waits for serve to
// say that it serves.
const restWait = 10 * time.Second

// startRest lets the rest of the start-up begin.
func (m *machine) startRest() { m.restOnce.Do(func() { close(m.rest) }) }

// settle runs step 11 in the background while serve runs.
func (m *machine) settle() {
	defer func() {
		if r := recover(); r != nil {
			m.log.Error("panic", "panic", r, "stack", string(debug.Stack()))
			m.stop <- syscall.SIGTERM
		}
	}()
	t0 := time.Now()
	if n, err := prefaultExecutable(); err != nil {
		m.log.Debug("mapping the executable's pages", "err", err)
	} else {
		m.log.Info("executable's pages mapped", "pages", n, "took", fmt.Sprintf("%.3f", time.Since(t0).Seconds()))
	}
	<-m.modulesDone
	if _, err := xenfsMount.mount(); err != nil {
		m.log.Debug("optional file system", "fs", xenfsMount.String(), "err", err)
	}
	m.watchConfig()
}

// watchConfig applies the configuration in xenstore now and on every
// change from now on.
func (m *machine) watchConfig() {
	if m.cfg.Load() == nil {
		m.cfg.Store(&Config{LogLevel: slog.LevelInfo, Cache: blkback.CacheAuto})
	}
	m.watchMu.Lock()
	defer m.watchMu.Unlock()
	if m.stopping {
		return
	}
	m.reloadConfig()
	w, err := m.xs.Watch(ConfigDir, "blkdom-appliance-config", func(string) { m.reloadConfig() })
	if err != nil {
		m.log.Error("configuration changes will be missed", "err", err)
		return
	}
	m.watch = w
}

// loadConfig reads Config from xenstore, keeps it and applies the log
// level. If xenstore cannot be read it says so, and false: the
// configuration in force stays.
func (m *machine) loadConfig() (Config, bool) {
	keys, err := readConfig(m.xs)
	if err != nil {
		m.log.Error("reading configuration", "err", err)
		return Config{}, false
	}
	cfg, err := ParseConfig(keys)
	if err != nil {
		m.log.Error("configuration", "err", err)
	}
	m.cfg.Store(&cfg)
	m.level.Set(cfg.LogLevel)
	return cfg, true
}

// reloadConfig reads Config from xenstore and applies it: the log level
// at once, the network and the mounts through their sets. It runs once
// every module is loaded and on every change of ConfigDir after that,
// one at a time (xs runs a watch's events in order).
func (m *machine) reloadConfig() {
	cfg, ok := m.loadConfig()
	if !ok {
		return
	}
	if err := m.net.apply(cfg.Net); err != nil {
		m.log.Error("network", "err", err)
	}
	if err := m.mounts.apply(cfg.Mounts); err != nil {
		m.log.Error("mounts", "err", err)
	}
	if cfg.Upgrade != m.upgradeSeen {
		m.upgradeSeen = cfg.Upgrade
		if cfg.Upgrade != "" {
			go m.upgrade(cfg.Upgrade)
		}
	}
	m.log.Info("configuration", "log-level", cfg.LogLevel.String(), "cache", string(cfg.Cache),
		"mounts", fmt.Sprint(m.mounts.list()), "net", fmt.Sprint(cfg.Net))
}

// startup is how long each step of the start-up took: each step ends
// where the next begins.
type startup struct {
	names []string
	ends  []time.Duration // since the start
}

// step ends the step called name now; start is when Run began.
func (s *startup) step(name string, start time.Time) {
	s.names = append(s.names, name)
	s.ends = append(s.ends, time.Since(start))
}

// attrs are the steps' durations in seconds, and the total, for the log.
func (s *startup) attrs() []any {
	var out []any
	var prev time.Duration
	for i, name := range s.names {
		out = append(out, name, seconds(s.ends[i]-prev))
		prev = s.ends[i]
	}
	return append(out, "total", seconds(prev))
}

// seconds formats d as seconds with millisecond precision, as the e2e
// harness reads them.
func seconds(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }

// publish records the state of a configured thing (rel is "net/eth0" or
// "mounts/0") under StatusDir, and logs a failure to do so.
func (m *machine) publish(rel, state string, err error) {
	if perr := publishStatus(m.xs, rel, state, err); perr != nil {
		m.log.Warn("publishing state", "what", rel, "state", state, "err", perr)
	}
}
