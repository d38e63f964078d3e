package main

import (
	"context"
	"flag"
	"log/slog"
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
	return serve(ctx, log, *workers)
}

// serve runs the backend on this machine's Xen until ctx is done.
func serve(ctx context.Context, log *slog.Logger, workers int) error {
	c, err := xs.Open()
	if err != nil {
		return err
	}
	defer c.Close()
	b := blkback.New(c, blkback.NewPlatform(gnttab.Open, evtchn.Open),
		blkback.Options{Workers: workers, Logger: log})
	return b.Serve(ctx)
}
