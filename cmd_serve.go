package main

import (
	"context"
	"flag"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"blkdom/blkback"
	"blkdom/ebpf"
	"blkdom/evtchn"
	"blkdom/gnttab"
	"blkdom/xs"
)

// runServe is the daemon: it serves every vbd under this domain's
// backend/vbd until SIGTERM or SIGINT, then closes every device in order.
func runServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	engine := fs.String("engine", blkback.EngineUring, "I/O engine: io_uring, or workers (goroutines doing preadv/pwritev)")
	workers := fs.Int("workers", 8, "I/O goroutines per ring of the workers engine; requests in flight per ring with grant copy")
	poll := fs.Duration("poll", 50*time.Microsecond, "how long a ring is polled after a batch before the event channel is re-armed (0: never)")
	verbose := fs.Bool("v", false, "log at debug level")
	metrics := fs.String("metrics", "", "serve Prometheus metrics on this address (e.g. :9129)")
	cache := fs.String("cache", "auto", "default cache policy: auto, direct, buffered or grant-copy")
	probes := fs.Bool("ebpf", false, "load the eBPF probes for late network references to granted pages (also: xenstore key blkdom/ebpf=1)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *poll == 0 {
		*poll = -1 // Options: negative turns polling off
	}
	return serve(ctx, blkback.Options{Engine: *engine, Workers: *workers, PollTime: *poll, Logger: log, Cache: *cache}, *metrics, *probes)
}

// serve runs the backend on this machine's Xen until ctx is done, and
// serves its metrics on addr if it is not empty. The eBPF probes are
// loaded when probes is set or the domain's blkdom/ebpf key is 1.
func serve(ctx context.Context, opts blkback.Options, addr string, probes bool) error {
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
	if addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			b.WritePrometheus(w)
		})}
		go srv.Serve(l)
		defer srv.Close()
	}
	return b.Serve(ctx)
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
