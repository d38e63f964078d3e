package main

import (
	"context"
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
func serveCmd(fs *flag.FlagSet) func() error {
	engine := fs.String("engine", blkback.EngineUring, "I/O `engine`: "+strings.Join(blkback.Engines, " or ")+" (goroutines doing preadv/pwritev)")
	workers := fs.Int("workers", 8, "I/O goroutines per ring of the workers engine; requests in flight per ring with grant copy (at least 1)")
	poll := fs.Duration("poll", 50*time.Microsecond, "how long a ring is polled after a batch before the event channel is re-armed (0: never)")
	verbose := fs.Bool("v", false, "log at debug level")
	metrics := fs.String("metrics", "", "serve Prometheus metrics at http://`address`/metrics (e.g. :9129)")
	cache := fs.String("cache", string(blkback.CacheAuto), "default cache `policy`: "+blkback.CachePolicyNames())
	probes := fs.Bool("ebpf", false, "load the eBPF probes for late network references to granted pages (also: xenstore key blkdom/ebpf=1)")
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
			Logger: appliance.NewLogger(os.Stderr, level), Cache: policy}
		return serve(ctx, opts, *metrics, *probes)
	}
}

// serve runs the backend on this machine's Xen until ctx is done, and
// serves its metrics on addr if it is not empty. The eBPF probes are
// loaded when probes is set or the domain's blkdom/ebpf key is 1.
func serve(ctx context.Context, opts blkback.Options, addr string, probes bool) error {
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
