package e2e

import (
	"testing"
)

// TestDDTimings reads the start-up numbers out of a driver domain's
// console as the stamped step prints it (runs without Xen).
func TestDDTimings(t *testing.T) {
	console := `[    2.000000] Trying to unpack rootfs image as initramfs...
[    2.500000] Freeing initrd memory: 6000K
[    3.000000] Run /init as init process
[    3.300000] blkdom: level=INFO msg="blkdom is PID 1" pid=1
[    3.700000] blkdom: level=INFO msg=start-up early=0.010 modules=0.200 xenstore=0.050 config=0.040 total=0.300 xen="/sys/hypervisor/type is xen"
[    3.800000] blkdom: level=INFO msg=serving domain=1 path=/local/domain/1/backend/vbd
[    3.850000] blkdom: level=INFO msg="waiting for the frontend" vbd=0/51712 frontend=/x params=/dev/xvdb took=0.045 look=0.010 state=0.010 step=0.070
[    6.000000] blkdom: level=INFO msg="loaded 35 of 35 modules" kernel=6.1.0 took=2.500 modules="a b"
[    6.200000] blkdom: level=INFO msg=configuration log-level=INFO cache=auto mounts="[]" net=[]
[    7.000000] blkdom: level=INFO msg="eBPF probes on: counting late network references to granted pages" took=3.100
[   20.060000] blkdom: level=INFO msg="waiting for the frontend" vbd=2/51712 frontend=/local/domain/2/device/vbd/51712 params=/dev/xvdb took=0.020
[   20.100000] blkdom: level=INFO msg="waiting for the frontend" vbd=2/51728 frontend=/local/domain/2/device/vbd/51728 params=/mnt/images/guest.img took=0.040 look=0.020 state=0.010 step=0.015`
	metricsMu.Lock()
	before := len(metrics)
	metricsMu.Unlock()
	ddTimings(t, console, 2)
	metricsMu.Lock()
	got := map[string]string{}
	for _, kv := range metrics[before:] {
		got[kv[0]] = kv[1]
	}
	metrics = metrics[:before] // not a run's numbers
	metricsMu.Unlock()
	want := map[string]string{
		"dd_initramfs_unpack_seconds":     "0.500",
		"dd_init_to_main_seconds":         "0.300",
		"dd_init_to_serving_seconds":      "0.800",
		"dd_startup_early_seconds":        "0.010",
		"dd_startup_modules_seconds":      "0.200",
		"dd_startup_xenstore_seconds":     "0.050",
		"dd_startup_config_seconds":       "0.040",
		"dd_modules_all_seconds":          "2.500",
		"dd_init_to_configured_seconds":   "3.200",
		"dd_ebpf_load_seconds":            "3.100",
		"vbd_to_initwait_seconds":         "0.040",
		"dd_init_to_all_initwait_seconds": "17.100",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("metrics %v, want %v", got, want)
	}
}
