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
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"blkdom/blkback"
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
	Log    *slog.Logger
	cfg    *atomic.Pointer[Config]
	mounts *mountSet
}

// Config returns blkdom's configuration as last read from xenstore.
func (h *Host) Config() Config { return *h.cfg.Load() }

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
// In order, it
//
//  1. takes SIGTERM and SIGPWR (stop, power off) and SIGINT (stop, reboot);
//  2. mounts proc, sysfs, devtmpfs, devpts, and tmpfs on /run and /tmp,
//     each unless already mounted;
//  3. logs to /dev/console and to the kernel log (/dev/kmsg);
//  4. turns Ctrl-Alt-Del into SIGINT and sets the kernel's poweroff_cmd to
//     "<itself> poweroff", so Xen's reboot, poweroff and halt requests
//     arrive as signals;
//  5. reaps orphaned processes from now on;
//  6. loads the kernel modules of /lib/modules/<release>/modules.dep, each
//     after the modules it needs;
//  7. mounts xenfs on /proc/xen, bpffs on /sys/fs/bpf and tracefs on
//     /sys/kernel/tracing, where the kernel has them;
//  8. looks for Xen, and without it says so and powers off (or, with
//     blkdom.noxen=wait on the kernel command line, waits for a stop);
//  9. connects to xenstore, reads blkdom's configuration (Config; its
//     log level, cache policy, network interfaces and mounts), brings
//     its network interfaces up, mounts its file systems, and watches it
//     for changes from then on;
//  10. runs serve until it returns or a stop signal arrives;
//  11. to stop: cancels serve's context and waits for serve to return
//     (StopTimeout at most), unmounts the configured file systems,
//     closes xenstore, syncs, and powers off or reboots.
//
// A panic in Run's own steps or in serve's goroutine is logged and ends in
// the orderly stop. A panic in a goroutine serve starts cannot be caught
// and takes the kernel with it: serve must not let one escape.
func Run(serve Serve) {
	m := &machine{stop: make(chan os.Signal, 4), served: make(chan error, 1)}
	m.level.Set(slog.LevelInfo)
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

// machine is the state PID 1 keeps between booting and stopping.
type machine struct {
	console console
	level   slog.LevelVar
	log     *slog.Logger
	stop    chan os.Signal
	cfg     atomic.Pointer[Config]
	mounts  mountSet
	net     netSet
	xs      *xs.Client
	watch   *xs.Watch
	cancel  context.CancelFunc // nil until serve runs
	served  chan error
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
	m.log.Info("blkdom is PID 1", "pid", os.Getpid())
	if exe, err := os.Executable(); err != nil {
		m.log.Error("no stop requests from the kernel", "err", err)
	} else if err := takeStopRequests(exe); err != nil {
		m.log.Error("stop requests from the kernel", "err", err)
	}
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	go reapOrphans(sigchld)
	m.loadModules()
	for _, fs := range lateMounts {
		if _, err := fs.mount(); err != nil {
			m.log.Debug("optional file system", "fs", fs.String(), "err", err)
		}
	}
	evidence, ok := detectXen("/")
	if !ok {
		if kernelArg("/proc/cmdline", NoXenArg) != "wait" {
			m.log.Warn("no Xen hypervisor: there are no guests to serve; powering off")
			return powerOff
		}
		m.log.Warn("no Xen hypervisor: waiting for a stop request (" + NoXenArg + "=wait)")
		return m.stopRequested(<-m.stop)
	}
	m.log.Info("Xen found", "how", evidence)
	c, err := xs.Open()
	if err != nil {
		m.log.Error("no xenstore: powering off", "err", err)
		return powerOff
	}
	m.xs = c
	m.net.publish = m.publish
	m.mounts.publish = m.publish
	m.watchConfig()
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() {
		defer func() {
			if r := recover(); r != nil {
				m.served <- fmt.Errorf("panic: %v\n%s", r, debug.Stack())
			}
		}()
		m.served <- serve(ctx, &Host{XS: c, Log: m.log, cfg: &m.cfg, mounts: &m.mounts})
	}()
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
	if m.watch != nil {
		m.watch.Close()
	}
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

// loadModules runs step 6 and logs one line for what loaded and one for
// each module that did not.
func (m *machine) loadModules() {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		m.log.Error("modules", "err", err)
		return
	}
	release := unix.ByteSliceToString(u.Release[:])
	loads, err := loadModules(filepath.Join("/lib/modules", release))
	if err != nil {
		m.log.Warn("no modules loaded", "kernel", release, "err", err)
		return
	}
	var loaded []string
	for _, l := range loads {
		if l.err != nil {
			m.log.Warn("module not loaded", "module", l.name, "err", l.err)
			continue
		}
		loaded = append(loaded, l.name)
	}
	m.log.Info(fmt.Sprintf("loaded %d of %d modules", len(loaded), len(loads)),
		"kernel", release, "modules", strings.Join(loaded, " "))
}

// watchConfig applies the configuration in xenstore now and on every
// change from now on.
func (m *machine) watchConfig() {
	m.cfg.Store(&Config{LogLevel: slog.LevelInfo, Cache: blkback.CacheAuto})
	m.reloadConfig()
	w, err := m.xs.Watch(ConfigDir, "blkdom-appliance-config", func(string) { m.reloadConfig() })
	if err != nil {
		m.log.Error("configuration changes will be missed", "err", err)
		return
	}
	m.watch = w
}

// reloadConfig reads Config from xenstore and applies it: the log level
// at once, the mounts through the mount set. It runs at boot and on every
// change of ConfigDir, one at a time (xs runs a watch's events in order).
func (m *machine) reloadConfig() {
	keys, err := readConfig(m.xs)
	if err != nil {
		m.log.Error("reading configuration", "err", err)
		return
	}
	cfg, err := ParseConfig(keys)
	if err != nil {
		m.log.Error("configuration", "err", err)
	}
	m.cfg.Store(&cfg)
	m.level.Set(cfg.LogLevel)
	if err := m.net.apply(cfg.Net); err != nil {
		m.log.Error("network", "err", err)
	}
	if err := m.mounts.apply(cfg.Mounts); err != nil {
		m.log.Error("mounts", "err", err)
	}
	m.log.Info("configuration", "log-level", cfg.LogLevel.String(), "cache", string(cfg.Cache),
		"mounts", fmt.Sprint(m.mounts.list()), "net", fmt.Sprint(cfg.Net))
}

// publish records the state of a configured thing (rel is "net/eth0" or
// "mounts/0") under StatusDir, and logs a failure to do so.
func (m *machine) publish(rel, state string, err error) {
	if perr := publishStatus(m.xs, rel, state, err); perr != nil {
		m.log.Warn("publishing state", "what", rel, "state", state, "err", perr)
	}
}
