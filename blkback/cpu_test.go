package blkback_test

import (
	"errors"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"blkdom/blkback"
)

// The backend publishes its process's CPU time with its statistics, under
// its own domain's data/blkdom, and it only grows; Prometheus shows it too.
func TestCPUPublished(t *testing.T) {
	bed := newBedWith(t, blkback.Options{StatsInterval: 20 * time.Millisecond})
	read := func() (blkback.CPU, error) {
		return blkback.ParseCPU(func(key string) (string, error) {
			return bed.Dom0.Read("/local/domain/0/" + blkback.CPUDir + "/" + key)
		})
	}
	deadline := time.Now().Add(5 * time.Second)
	var first blkback.CPU
	for {
		c, err := read()
		if err == nil && c.User+c.System > 0 {
			first = c
			break
		}
		if time.Now().After(deadline) || (err != nil && !errors.Is(err, syscall.ENOENT)) {
			t.Fatalf("CPU time %+v, %v", c, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The domain's time comes with it (this machine's /proc/stat).
	for _, k := range []string{"domain_busy_us", "domain_steal_us"} {
		v, err := bed.Dom0.Read("/local/domain/0/" + blkback.CPUDir + "/" + k)
		if n, perr := strconv.ParseInt(v, 10, 64); err != nil || perr != nil || n < 0 || k == "domain_busy_us" && n == 0 {
			t.Errorf("%s = %q, %v", k, v, err)
		}
	}
	// Burn some CPU in this process: the published time must follow.
	for start := time.Now(); time.Since(start) < 50*time.Millisecond; {
	}
	for {
		c, err := read()
		if err != nil {
			t.Fatal(err)
		}
		if c.User < first.User || c.System < first.System {
			t.Fatalf("CPU time went back from %+v to %+v", first, c)
		}
		if c.User+c.System >= first.User+first.System+40*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CPU time %+v, still %+v after burning 50 ms", c, first)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var prom strings.Builder
	if err := bed.Backend.WritePrometheus(&prom); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"# TYPE blkdom_cpu_seconds_total counter\n", `blkdom_cpu_seconds_total{mode="user"} `, `blkdom_cpu_seconds_total{mode="system"} `} {
		if !strings.Contains(prom.String(), line) {
			t.Errorf("Prometheus text lacks %q:\n%s", line, prom.String())
		}
	}
}

func TestParseCPU(t *testing.T) {
	for _, c := range []struct {
		user, sys string
		want      blkback.CPU
		ok        bool
	}{
		{"1500", "20", blkback.CPU{User: 1500 * time.Microsecond, System: 20 * time.Microsecond}, true},
		{"0", "0", blkback.CPU{}, true},
		{"-1", "0", blkback.CPU{}, false},
		{"1.5", "0", blkback.CPU{}, false},
		{"", "0", blkback.CPU{}, false},
	} {
		keys := map[string]string{"cpu_user_us": c.user, "cpu_sys_us": c.sys}
		got, err := blkback.ParseCPU(func(k string) (string, error) { return keys[k], nil })
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseCPU(%q, %q) = %+v, %v; want %+v, ok %v", c.user, c.sys, got, err, c.want, c.ok)
		}
		if c.ok {
			back := map[string]string{}
			for _, kv := range got.Keys() {
				back[kv[0]] = kv[1]
			}
			if back["cpu_user_us"] != c.user || back["cpu_sys_us"] != c.sys {
				t.Errorf("Keys of %+v = %v", got, back)
			}
		}
	}
}

func TestParseProcStat(t *testing.T) {
	for _, c := range []struct {
		stat string
		want blkback.DomainCPU
		ok   bool
	}{
		// user nice system idle iowait irq softirq steal guest guest_nice
		{"cpu  100 2 50 9000 30 4 6 250 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n",
			blkback.DomainCPU{Busy: 1620 * time.Millisecond, Steal: 2500 * time.Millisecond}, true},
		{"cpu  0 0 0 0 0 0 0 0\n", blkback.DomainCPU{}, true},
		{"cpu  1 2 3 4 5 6 7\n", blkback.DomainCPU{}, false},
		{"cpu0 1 2 3 4 5 6 7 8\n", blkback.DomainCPU{}, false},
		{"cpu  1 2 x 4 5 6 7 8\n", blkback.DomainCPU{}, false},
		{"", blkback.DomainCPU{}, false},
	} {
		got, err := blkback.ParseProcStat(c.stat)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseProcStat(%q) = %+v, %v; want %+v, ok %v", c.stat, got, err, c.want, c.ok)
		}
	}
	// This machine's own.
	if d, err := blkback.ReadDomainCPU(); err != nil || d.Busy <= 0 {
		t.Errorf("ReadDomainCPU() = %+v, %v", d, err)
	}
}
