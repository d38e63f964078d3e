package blkback

import (
	"fmt"
	"strconv"
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

// publishCPU writes the process's CPU time under CPUDir in one transaction.
func (b *Backend) publishCPU() {
	c, err := ProcessCPU()
	if err == nil {
		err = b.xs.Transaction(func(tx *xs.Tx) error {
			for _, kv := range c.Keys() {
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
