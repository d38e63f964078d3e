package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"blkdom/appliance"
	"blkdom/blkback"
	"blkdom/ebpf"
	"blkdom/evtchn"
	"blkdom/gnttab"
	"blkdom/metricsd"
	"blkdom/xs"
)

// serveCmd is the daemon: it serves every vbd under this domain's
// backend/vbd until SIGTERM or SIGINT, then closes every device in order.
// On SIGUSR2 it hands over to the binary now at its own path (an upgrade
// in place): see serve.
func serveCmd(fs *flag.FlagSet) func() error {
	engine := fs.String("engine", blkback.EngineUring, "I/O `engine`: "+strings.Join(blkback.Engines, " or ")+" (goroutines doing preadv/pwritev)")
	workers := fs.Int("workers", 8, "I/O goroutines per ring of the workers engine; requests in flight per ring with grant copy (at least 1)")
	poll := fs.Duration("poll", 50*time.Microsecond, "how long a ring is polled after a batch before the event channel is re-armed (0: never)")
	verbose := fs.Bool("v", false, "log at debug level")
	metrics := fs.String("metrics", "", "serve Prometheus metrics at http://`address`/metrics (e.g. :9129)")
	cache := fs.String("cache", string(blkback.CacheAuto), "default cache `policy`: "+blkback.CachePolicyNames())
	probes := fs.Bool("ebpf", false, "load the eBPF probes for late network references to granted pages")
	state := fs.String("state-dir", defaultStateDir, "`directory` (on a tmpfs) for each ring's ledger of requests in flight, which a restarted blkdom adopts; empty: none")
	return func() error {
		if *workers < 1 {
			return usageErrorf("-workers %d: want at least 1", *workers)
		}
		if !slices.Contains(blkback.Engines, *engine) {
			return usageErrorf("-engine %s: want %s", *engine, strings.Join(blkback.Engines, " or "))
		}
		if *poll < 0 {
			return usageErrorf("-poll %v: want 0 or more", *poll)
		}
		if *poll == 0 {
			*poll = -1 // Options: negative turns polling off
		}
		policy, err := blkback.ParseCachePolicy(*cache)
		if err != nil {
			return usageErrorf("-cache: %v", err)
		}
		level := slog.LevelInfo
		if *verbose {
			level = slog.LevelDebug
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		opts := blkback.Options{Engine: *engine, Workers: *workers, PollTime: *poll,
			Logger: appliance.NewLogger(os.Stderr, level), Cache: func() blkback.CachePolicy { return policy },
			StateDir: *state}
		return serve(ctx, server{opts: opts, metrics: *metrics, probes: *probes})
	}
}

// server is what serve runs: the daemon's flags, or a driver domain's
// configuration.
type server struct {
	opts    blkback.Options
	metrics string // serve Prometheus metrics at this address ("": none)
	probes  bool   // load the eBPF probes, in the background
	// xs is the xenstore connection to use (PID 1 hands down its own);
	// nil: serve opens one and closes it when it returns.
	xs *xs.Client
	// upgrades delivers binaries to hand over to, as SIGUSR2 does to the
	// binary at this process's path (PID 1: Host.Upgrades); nil: none.
	upgrades <-chan string
}

// defaultStateDir is where blkdom keeps its rings' ledgers: a tmpfs in
// dom0 and in the appliance, so a ledger lasts as long as the system's
// boot, which is as long as the rings it describes.
const defaultStateDir = "/run/blkdom"

// serve runs the backend on this machine's Xen until ctx is done. On
// SIGUSR2 it stops for a successor (blkback.ErrHandOver: every ring
// drained and answered, no device's state changed, the owner token
// released) and execs the binary at its own path, which adopts the
// connections: an upgrade with guests connected, in dom0 or as PID 1.
func serve(ctx context.Context, s server) error {
	// A ring's loop waits for its I/O and events in io_uring_enter, a
	// system call the runtime sees. With one processor (a one-vCPU driver
	// domain) the runtime hands the processor of every such wait to
	// another thread after 20 us, and takes it back after: thread
	// switches a PV domain pays dearly for. A second, idle processor
	// lets the wait keep its own (see package uring).
	if runtime.GOMAXPROCS(0) < 2 {
		runtime.GOMAXPROCS(2)
	}
	if s.opts.StateDir != "" {
		if err := os.MkdirAll(s.opts.StateDir, 0o700); err != nil {
			s.opts.Logger.Warn("no ledgers: a restart after a kill loses the requests in flight", "err", err)
			s.opts.StateDir = ""
		}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)
	next := make(chan string, 1) // the binary to exec after a hand-over ("": this one's path)
	go func() {
		select {
		case <-usr2:
			next <- ""
		case exe := <-s.upgrades:
			next <- exe
		case <-ctx.Done():
			return
		}
		cancel(blkback.ErrHandOver)
	}()
	err := serveBackend(ctx, s)
	if err == nil && errors.Is(context.Cause(ctx), blkback.ErrHandOver) {
		return handOver(s.opts.Logger, <-next)
	}
	return err
}

// handOver execs exe (empty: the binary at this process's path) with this
// process's arguments and environment, after Serve stopped with
// blkback.ErrHandOver: the new image adopts every connection. The pid
// stays; so does PID 1's role. Should exe fail to start, the binary at
// this process's path is exec'd instead: the rings are released, and
// someone must adopt them.
func handOver(log *slog.Logger, exe string) error {
	if exe != "" {
		log.Info("handing over", "exec", exe)
		err := syscall.Exec(exe, os.Args, os.Environ())
		log.Error("hand-over failed: starting this binary again", "exec", exe, "err", err)
	}
	self, err := os.Executable() // the path, not the inode: a replaced binary runs
	if err != nil {
		return fmt.Errorf("hand-over: %w", err)
	}
	log.Info("handing over", "exec", self)
	return fmt.Errorf("hand-over: exec %s: %w", self, syscall.Exec(self, os.Args, os.Environ()))
}

// serveBackend is serve's backend and metrics server, until ctx is done.
func serveBackend(ctx context.Context, s server) error {
	var l net.Listener
	if s.metrics != "" {
		var err error
		if l, err = net.Listen("tcp", s.metrics); err != nil {
			return err
		}
		defer l.Close()
	}
	c := s.xs
	if c == nil {
		var err error
		if c, err = xs.Open(); err != nil {
			return err
		}
		defer c.Close()
	}
	opts := s.opts
	if s.probes {
		p := &lateProbes{}
		serving, log := opts.Serving, opts.Logger
		defer p.close(log)
		opts.Serving = func() {
			go p.load(ctx, log)
			if serving != nil {
				serving()
			}
		}
		opts.Probes = p
	}
	b := blkback.New(c, blkback.NewPlatform(gnttab.Open, evtchn.Open), opts)
	if l != nil {
		mctx, stop := context.WithCancel(ctx)
		defer stop()
		go func() {
			if err := metricsd.Serve(mctx, l, metricsPage(b)); err != nil {
				opts.Logger.Error("metrics server stopped", "err", err)
			}
		}()
	}
	return b.Serve(ctx)
}

// metricsPage is the page serve -metrics serves: blkdom_build_info, then
// every device's statistics.
func metricsPage(b *blkback.Backend) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "# HELP blkdom_build_info The running blkdom's version.\n"+
			"# TYPE blkdom_build_info gauge\nblkdom_build_info{version=\"%s\",goversion=\"%s\"} 1\n",
			version, runtime.Version())
		if err != nil {
			return err
		}
		return b.WritePrometheus(w)
	}
}

// lateProbes are the eBPF probes, loaded in the background once serving
// has begun: loading them takes seconds under emulation (5.6 s in an e2e
// driver domain under TCG), and serving never waits for them. Until they are loaded (or if they fail to load) nothing is
// counted and LateRefs says so; requests in flight when they arrive may
// be miscounted, as if their grants had not been persistent.
type lateProbes struct {
	p      atomic.Pointer[ebpf.Probes]
	mu     sync.Mutex
	closed bool
}

var errProbesNotLoaded = errors.New("eBPF probes not loaded")

func (l *lateProbes) Begin(dom uint16, refs []gnttab.Ref) error {
	if p := l.p.Load(); p != nil {
		return p.Begin(dom, refs)
	}
	return nil
}

func (l *lateProbes) Complete(dom uint16, disk uint32, refs []gnttab.Ref) error {
	if p := l.p.Load(); p != nil {
		return p.Complete(dom, disk, refs)
	}
	return nil
}

func (l *lateProbes) LateRefs(disk uint32) (uint64, error) {
	if p := l.p.Load(); p != nil {
		return p.LateRefs(disk)
	}
	return 0, errProbesNotLoaded
}

// load loads the probes, or says once why they are off: blkdom serves
// disks the same either way. While ctx lasts, each late reference is
// logged at debug level.
func (l *lateProbes) load(ctx context.Context, log *slog.Logger) {
	t0 := time.Now()
	p, err := ebpf.Load(ebpf.Options{GrantTable: true})
	if err != nil {
		log.Warn("eBPF probes off", "why", err)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		p.Close()
		return
	}
	l.p.Store(p)
	log.Info("eBPF probes on: counting late network references to granted pages",
		"took", fmt.Sprintf("%.3f", time.Since(t0).Seconds()))
	go func() {
		var e ebpf.Event
		for ctx.Err() == nil {
			if err := p.ReadEvent(&e); err != nil {
				return // closed
			}
			if log.Enabled(ctx, slog.LevelDebug) {
				log.Debug("late reference", "dom", e.Dom, "gref", e.Gref, "disk", e.Disk,
					"hook", e.Hook.String(), "since", e.Since, "unmapped", e.Unmapped)
			}
		}
	}()
}

// close closes the probes once serving is over, now or when they have
// loaded. It first logs what they saw: the late references at each hook,
// the references to pages in flight (whether the kernel sent granted pages
// by reference at all) and how often each program ran (a hook that ran and
// found nothing is not one that never ran).
func (l *lateProbes) close(log *slog.Logger) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	p := l.p.Load()
	if p == nil {
		return
	}
	c, err := p.Global()
	runs, rerr := p.Runs()
	if err = errors.Join(err, rerr); err != nil {
		log.Warn("eBPF probes: cannot read their counters", "err", err)
	} else {
		attrs := []any{"late_retransmit", c.Retransmit, "late_xmit", c.Xmit,
			"late_drop", c.Drop, "late_consume", c.Consume, "lost", c.Lost}
		for h, n := range c.InFlight {
			attrs = append(attrs, "inflight_"+ebpf.Hook(h).String(), n)
		}
		for _, r := range runs {
			attrs = append(attrs, "runs_"+r.Hook, r.Count)
		}
		log.Info("eBPF probes closing", attrs...)
	}
	p.Close()
}
