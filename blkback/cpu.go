package blkback

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"blkdom/xs"
)

// CPUDir is the directory, under the backend domain's home
// (/local/domain/<id>), where the backend publishes its process's CPU time
// with each round of statistics: whoever measures the backend from outside
// (dom0 watching a driver domain) reads it there. It sits under data/, the
// one directory a domain may write in its own home.
const CPUDir = "data/blkdom"

// CPU is the processor time the backend's process has used since it
// started (its rusage: every goroutine, the data path and the control
// plane alike).
type CPU struct {
	User, System time.Duration
}

// ProcessCPU reads this process's CPU time.
func ProcessCPU() (CPU, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return CPU{}, fmt.Errorf("getrusage: %w", err)
	}
	return CPU{User: time.Duration(ru.Utime.Nano()), System: time.Duration(ru.Stime.Nano())}, nil
}

// Keys returns the CPU time as xenstore key/value pairs, in microseconds.
func (c CPU) Keys() [][2]string {
	return [][2]string{
		{"cpu_user_us", strconv.FormatInt(c.User.Microseconds(), 10)},
		{"cpu_sys_us", strconv.FormatInt(c.System.Microseconds(), 10)},
	}
}

// ParseCPU reads CPU time back from its keys, with read returning the
// value of a key of CPUDir.
func ParseCPU(read func(key string) (string, error)) (CPU, error) {
	var c CPU
	for _, f := range []struct {
		key string
		d   *time.Duration
	}{{"cpu_user_us", &c.User}, {"cpu_sys_us", &c.System}} {
		v, err := read(f.key)
		if err != nil {
			return CPU{}, err
		}
		us, err := strconv.ParseInt(v, 10, 64)
		if err != nil || us < 0 {
			return CPU{}, fmt.Errorf("%s: bad value %q", f.key, v)
		}
		*f.d = time.Duration(us) * time.Microsecond
	}
	return c, nil
}

// DomainCPU is the whole domain's processor time from /proc/stat (every
// CPU, in the kernel's USER_HZ ticks): Busy is user, nice, system, irq and
// softirq time, Steal the time the hypervisor ran something else while
// this domain wanted to run. It is what a kernel backend's domain is
// measured by, so blkdom's domain is measured the same way beside the
// process's rusage. The two differ by more than the domain's other work:
// a kernel without CONFIG_PARAVIRT_TIME_ACCOUNTING and
// CONFIG_IRQ_TIME_ACCOUNTING (Debian's) charges to the running process the
// time stolen from its CPU and the interrupts that land while it runs.
type DomainCPU struct {
	Busy, Steal time.Duration
}

// userHZ is the unit of /proc/stat's times: USER_HZ, 100 on every Linux
// architecture blkdom builds for.
const userHZ = 100

// ReadDomainCPU reads the domain's processor time from /proc/stat.
func ReadDomainCPU() (DomainCPU, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return DomainCPU{}, err
	}
	return parseProcStat(string(b))
}

// parseProcStat reads the first line of /proc/stat: "cpu  user nice
// system idle iowait irq softirq steal ...".
func parseProcStat(stat string) (DomainCPU, error) {
	line, _, _ := strings.Cut(stat, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return DomainCPU{}, fmt.Errorf("/proc/stat: unexpected first line %.80q", line)
	}
	var t [8]uint64
	for i := range t {
		v, err := strconv.ParseUint(f[1+i], 10, 64)
		if err != nil {
			return DomainCPU{}, fmt.Errorf("/proc/stat: field %d: %q", i+1, f[1+i])
		}
		t[i] = v
	}
	tick := func(n uint64) time.Duration { return time.Duration(n) * time.Second / userHZ }
	return DomainCPU{Busy: tick(t[0] + t[1] + t[2] + t[5] + t[6]), Steal: tick(t[7])}, nil
}

// Keys returns the domain's time as xenstore key/value pairs, in
// microseconds.
func (d DomainCPU) Keys() [][2]string {
	return [][2]string{
		{"domain_busy_us", strconv.FormatInt(d.Busy.Microseconds(), 10)},
		{"domain_steal_us", strconv.FormatInt(d.Steal.Microseconds(), 10)},
	}
}

// publishCPU writes the process's CPU time and the domain's under CPUDir
// in one transaction.
func (b *Backend) publishCPU() {
	c, err := ProcessCPU()
	keys := c.Keys()
	if d, derr := ReadDomainCPU(); derr == nil {
		keys = append(keys, d.Keys()...)
	}
	if err == nil {
		err = b.xs.Transaction(func(tx *xs.Tx) error {
			for _, kv := range keys {
				if err := tx.Write(b.home+"/"+CPUDir+"/"+kv[0], kv[1]); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err != nil {
		b.log.Warn("publishing CPU time", "err", err)
	}
}

// writeCPUPrometheus writes the process's CPU time as a Prometheus counter.
func writeCPUPrometheus(p *printer) {
	c, err := ProcessCPU()
	if err != nil {
		return
	}
	p.printf("# HELP blkdom_cpu_seconds_total CPU time of the blkdom process, by mode.\n# TYPE blkdom_cpu_seconds_total counter\n")
	p.printf("blkdom_cpu_seconds_total{mode=\"user\"} %g\nblkdom_cpu_seconds_total{mode=\"system\"} %g\n",
		c.User.Seconds(), c.System.Seconds())
}
