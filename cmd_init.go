package main

import (
	"context"

	"blkdom/appliance"
	"blkdom/blkback"
)

// runPID1 is blkdom booted as the init of a storage driver domain; main
// calls it when it runs as process 1. It never returns.
func runPID1() { appliance.Run(serveAppliance) }

// serveAppliance serves the driver domain's vbds until ctx is done.
func serveAppliance(ctx context.Context, h *appliance.Host) error {
	cfg := h.Config()
	return serve(ctx, server{
		opts: blkback.Options{Logger: h.Log, Ready: h.Ready, Engine: cfg.Engine, PollTime: cfg.PollTime,
			Cache: func() blkback.CachePolicy { return h.Config().Cache }, Serving: h.Serving,
			StateDir: defaultStateDir},
		probes:   cfg.EBPF,
		xs:       h.XS,
		upgrades: h.Upgrades(),
	})
}
