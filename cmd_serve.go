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

	"blkdom/blkback"
	"blkdom/evtchn"
	"blkdom/gnttab"
	"blkdom/xs"
)

// runServe is the daemon: it serves every vbd under this domain's
// backend/vbd until SIGTERM or SIGINT, then closes every device in order.
func runServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	workers := fs.Int("workers", 8, "I/O goroutines per ring")
	verbose := fs.Bool("v", false, "log at debug level")
	metrics := fs.String("metrics", "", "serve Prometheus metrics on this address (e.g. :9129)")
	cache := fs.String("cache", "auto", "default cache policy: auto, direct, buffered or grant-copy")
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
	return serve(ctx, blkback.Options{Workers: *workers, Logger: log, Cache: *cache}, *metrics)
}

// serve runs the backend on this machine's Xen until ctx is done, and
// serves its metrics on addr if it is not empty.
func serve(ctx context.Context, opts blkback.Options, addr string) error {
	c, err := xs.Open()
	if err != nil {
		return err
	}
	defer c.Close()
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
