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
	probes := fs.Bool("ebpf", false, "load the eBPF probes for late network references to granted pages (also: xenstore key blkdom/ebpf=1)")
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
		opts := blkback.Options{Engine: *engine, Workers: *workers, PollTime: *poll,
			Logger: appliance.NewLogger(os.Stderr, level), Cache: policy, StateDir: *state}
		return serve(context.Background(), opts, *metrics, *probes)
	}
}

// defaultStateDir is where blkdom serve keeps its rings' ledgers: a tmpfs
// in dom0 and in the appliance, so a ledger lasts as long as the system's
// boot, which is as long as the rings it describes.
const defaultStateDir = "/run/blkdom"

// handOver execs the binary at this process's path with its arguments
// and environment, after Serve stopped with blkback.ErrHandOver: the new
// image adopts every connection. The pid stays; so does PID 1's role.
func handOver(log *slog.Logger) error {
	exe, err := os.Executable() // the path, not the inode: a replaced binary runs
	if err != nil {
		return fmt.Errorf("hand-over: %w", err)
	}
	log.Info("handing over", "exec", exe)
	return fmt.Errorf("hand-over: exec %s: %w", exe, syscall.Exec(exe, os.Args, os.Environ()))
}

// serve runs the backend on this machine's Xen until ctx is done or
// SIGTERM or SIGINT comes, and serves its metrics on addr if it is not
// empty. The eBPF probes are loaded when probes is set or the domain's
// blkdom/ebpf key is 1. On SIGUSR2 it stops for a successor
// (blkback.ErrHandOver: every ring drained and answered, no device's
// state changed, the owner token released) and execs the binary at its
// own path, which adopts the connections: an upgrade with guests
// connected.
func serve(ctx context.Context, opts blkback.Options, addr string, probes bool) error {
	if opts.StateDir != "" {
		if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
			opts.Logger.Warn("no ledgers: a restart after a kill loses the requests in flight", "err", err)
			opts.StateDir = ""
		}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	go func() {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGUSR2 {
				cancel(blkback.ErrHandOver)
			} else {
				cancel(errors.New(sig.String()))
			}
		case <-ctx.Done():
		}
	}()
	err := serveBackend(ctx, opts, addr, probes)
	if err == nil && errors.Is(context.Cause(ctx), blkback.ErrHandOver) {
		return handOver(opts.Logger)
	}
	return err
}

// serveBackend is serve's backend and metrics server, until ctx is done.
func serveBackend(ctx context.Context, opts blkback.Options, addr string, probes bool) error {
	var l net.Listener
	if addr != "" {
		var err error
		if l, err = net.Listen("tcp", addr); err != nil {
			return err
		}
		defer l.Close()
	}
	c, err := xs.Open()
	if err != nil {
		return err
	}
	defer c.Close()
	if v, _ := c.Read("blkdom/ebpf"); probes || v == "1" {
		if p := loadProbes(ctx, opts.Logger); p != nil {
			defer p.Close()
			opts.Probes = p
		}
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

// loadProbes loads the eBPF probes, or says once why they are off and
// returns nil: blkdom serves disks the same either way. While ctx lasts,
// each late reference is logged at debug level.
func loadProbes(ctx context.Context, log *slog.Logger) *ebpf.Probes {
	p, err := ebpf.Load(ebpf.Options{GrantTable: true})
	if err != nil {
		log.Warn("eBPF probes off", "why", err)
		return nil
	}
	log.Info("eBPF probes on: counting late network references to granted pages")
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
	return p
}
