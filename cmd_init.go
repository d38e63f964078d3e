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
	return serve(ctx, blkback.Options{Logger: h.Log, Ready: h.Ready}, "", false)
}

// runPoweroff is "blkdom poweroff", the kernel's poweroff_cmd in the
// driver domain: it asks PID 1 to stop in order and power off.
func runPoweroff([]string) error { return appliance.RequestPowerOff() }
