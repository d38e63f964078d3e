package e2e

import (
	"math"
	"testing"
	"time"
)

// TestDDUpgrade upgrades a storage driver domain's blkdom (PID 1) in
// place while a guest it serves writes known data with flushes, reads,
// and a probe times its I/O (the guest workload of TestDom0Restart). dom0
// names a binary on the domain's mounted file system in blkdom/upgrade:
// first a file that is no program (refused, nothing changes), then a copy
// of blkdom, which PID 1 checks and execs; the new image adopts the disk
// without a reconnect and without rebooting the domain. Its numbers join
// TestDom0Restart's in restart_lost_acked_writes and
// restart_guest_stall_seconds.
func TestDDUpgrade(t *testing.T) {
	s := start(t)
	if built.ddErr != nil {
		t.Fatalf("no driver domain image: %v", built.ddErr)
	}
	raw, fs := work+"/upraw.img", work+"/upfs.img"
	s.step(60*time.Second, "kernel_backend")
	s.step(120*time.Second, "dd_images %s %s /e2e/blkdom", raw, fs)
	s.cleanup(90*time.Second, "xl destroy updd 2>/dev/null; true")
	s.step(180*time.Second, "dd_create updd /boot/dd.cpio.gz %s %s", raw, fs)
	s.step(250*time.Second, "dd_wait updd '%s' 240", ddReady)
	s.guestStartWith("gupgrade", guestConfig{args: "e2e.restart=xvda"},
		"backend=updd,format=raw,vdev=xvda,access=rw,target=/mnt/images/guest.img")
	s.step(250*time.Second, "restart_ready gupgrade 240")
	s.step(150*time.Second, "dd_upgrade updd /mnt/images/guest.img refused")
	s.step(150*time.Second, "dd_upgrade updd /mnt/images/blkdom done")
	s.step(60*time.Second, "vbd_connected gupgrade xvda && sleep 5")
	s.step(310*time.Second, "restart_result gupgrade 300")
	s.step(60*time.Second, "vbd_connected gupgrade xvda")
	s.step(120*time.Second, "domain_destroy gupgrade")
}

// TestCombinedMetrics: the restart metrics of several scenarios are
// listed once, lost writes summed and the longest stall kept; other
// metrics are listed as recorded.
func TestCombinedMetrics(t *testing.T) {
	metricsMu.Lock()
	saved := metrics
	metrics = nil
	metricsMu.Unlock()
	defer func() { metricsMu.Lock(); metrics = saved; metricsMu.Unlock() }()
	for _, kv := range [][2]string{
		{"restart_lost_acked_writes", "0"}, {"restart_guest_stall_seconds", "1.27"}, {"x", "1"},
		{"restart_lost_acked_writes", "2"}, {"restart_guest_stall_seconds", "0.8"}, {"x", "2"},
		{"restart_guest_stall_seconds", "3.5"},
	} {
		metric(t, kv[0], kv[1])
	}
	want := [][2]string{{"restart_lost_acked_writes", "2"}, {"restart_guest_stall_seconds", "3.5"}, {"x", "1"}, {"x", "2"}}
	if len(metrics) != len(want) {
		t.Fatalf("metrics %v, want %v", metrics, want)
	}
	for i := range want {
		if metrics[i] != want[i] {
			t.Errorf("metrics %v, want %v", metrics, want)
		}
	}
	if got := mergeNumbers("0", "", math.Max); got != "" {
		t.Errorf("a missing value merged into %q; want it shown as missing", got)
	}
}
