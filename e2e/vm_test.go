package e2e

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// xenArgs is Xen's command line. The CPU model and xpti/pv-l1tf settings are
// what runs dom0 reliably under TCG; other combinations crash.
const xenArgs = "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all " +
	"dom0_mem=1024M,max:1024M dom0_max_vcpus=2 noreboot xpti=false pv-l1tf=false"

// The emulated CPU, and the clock Xen gives its domains. Haswell-noTSX
// without the four features QEMU's TCG does not emulate (it drops them
// anyway, with a warning each) and with an invariant TSC, which TCG's TSC
// is (one virtual clock for every vCPU, at a constant rate) but QEMU does
// not advertise, hence x-force-features. With it Xen uses the TSC as its
// platform timer (clocksource=tsc) and marks the domains' pvclock stable,
// so Linux reads the time in the vDSO in every boot, as on a server whose
// Xen is set up so: a clock read in a PV domain is 199 ns. On the former
// machine (Haswell-noTSX, Xen's default timer, which envClock=hpet boots)
// it was 39-50 µs, a system call, in the boots where Linux's watchdog had
// dropped its tsc clocksource, and about 200 ns in the others
// (BenchmarkClock in a PV dom0, 29 Nov).
const (
	cpuTSC     = "Haswell-noTSX,-pcid,-x2apic,-tsc-deadline,-invpcid,+invtsc,x-force-features=on"
	xenArgsTSC = " clocksource=tsc"
	cpuNoTSC   = "Haswell-noTSX"
	clockNoTSC = "hpet"
)

// platform is QEMU's -cpu and Xen's command line for envClock.
func platform() (cpu, args string) {
	if os.Getenv(envClock) == clockNoTSC {
		return cpuNoTSC, xenArgs
	}
	return cpuTSC, xenArgs + xenArgsTSC
}

// bootTimeout bounds QEMU start to dom0's READY marker (10-15 s unloaded).
const bootTimeout = 300 * time.Second

// fatalLine matches serial output after which the machine is of no more use.
var fatalLine = regexp.MustCompile(`\(XEN\) Panic on CPU|Kernel panic - not syncing|@@E2E FATAL`)

// endRC is the agent's END marker's exit status, at the marker's start.
var endRC = regexp.MustCompile(`^@@E2E [0-9]+ END rc=([0-9]+)@@`)

// metricLine is what a step prints for a number the harness reports.
var metricLine = regexp.MustCompile(`@@E2E METRIC ([A-Za-z0-9_]+)=([^@]*)@@`)

// vm is one QEMU running Xen and dom0, driven over the serial console.
type vm struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	start time.Time
	log   *os.File // every serial line, with seconds since start

	mu     sync.Mutex
	cond   *sync.Cond
	lines  []string
	exited bool
	nextID int
	// broken is set when the machine stopped answering or crashed: the
	// next test boots a new one.
	broken bool
}

// bootVM starts QEMU with the hypervisor, kernel and dom0 image in dir and
// waits for dom0's READY marker.
func bootVM(t *testing.T, cache, dom0Image, logPath string) (*vm, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	// Arguments the kernel does not know, without a dot, become dom0
	// init's environment.
	dom0Args := " console=hvc0 earlyprintk=xen rdinit=/init"
	if os.Getenv(envXSTrace) != "" {
		dom0Args += " E2E_XSTRACE=1"
	}
	cpu, args := platform()
	cmd := exec.Command("qemu-system-x86_64",
		"-machine", "pc", "-accel", "tcg", "-cpu", cpu, "-smp", "2", "-m", "3072",
		"-display", "none", "-monitor", "none", "-serial", "stdio", "-net", "none", "-no-reboot",
		"-kernel", filepath.Join(cache, "xen.elf"), "-append", args,
		"-initrd", filepath.Join(cache, "vmlinuz")+dom0Args+","+dom0Image)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	v := &vm{cmd: cmd, stdin: stdin, log: logf}
	v.cond = sync.NewCond(&v.mu)
	v.start = time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("qemu: %w", err)
	}
	go v.read(stdout)
	t.Logf("booting Xen and dom0 (serial log %s)", logPath)
	_, err = v.waitLine(0, time.Now().Add(bootTimeout), func(s string) bool {
		return strings.Contains(s, "@@E2E READY")
	})
	if err != nil {
		v.stop()
		return nil, fmt.Errorf("dom0 did not come up: %w\n%s", err, v.tail(0, 80))
	}
	metric(t, "boot_to_dom0_ready_seconds", fmt.Sprintf("%.1f", time.Since(v.start).Seconds()))
	return v, nil
}

// read collects serial output line by line until QEMU exits.
func (v *vm) read(r io.Reader) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		s, err := br.ReadString('\n')
		if s != "" {
			s = strings.TrimRight(s, "\r\n")
			fmt.Fprintf(v.log, "%8.2f %s\n", time.Since(v.start).Seconds(), s)
			v.mu.Lock()
			v.lines = append(v.lines, s)
			v.mu.Unlock()
			v.cond.Broadcast()
		}
		if err != nil {
			break
		}
	}
	v.mu.Lock()
	v.exited = true
	v.mu.Unlock()
	v.cond.Broadcast()
}

// waitLine waits until a line at index from or later satisfies match and
// returns its index. A fatal line, QEMU's exit or the deadline end the wait
// with an error.
func (v *vm) waitLine(from int, deadline time.Time, match func(string) bool) (int, error) {
	timer := time.AfterFunc(time.Until(deadline), v.cond.Broadcast)
	defer timer.Stop()
	v.mu.Lock()
	defer v.mu.Unlock()
	for i := from; ; {
		for ; i < len(v.lines); i++ {
			if match(v.lines[i]) {
				return i, nil
			}
			if fatalLine.MatchString(v.lines[i]) {
				v.broken = true
				return i, fmt.Errorf("fatal console line: %q", v.lines[i])
			}
		}
		if v.exited {
			v.broken = true
			return i, fmt.Errorf("qemu exited")
		}
		if !time.Now().Before(deadline) {
			return i, fmt.Errorf("timed out")
		}
		v.cond.Wait()
	}
}

// tail returns up to n serial lines from index from on, for a failure report.
func (v *vm) tail(from, n int) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	if from < len(v.lines)-n {
		from = len(v.lines) - n
	}
	return strings.Join(v.lines[from:], "\n")
}

// stepResult is what one dom0 step printed and how it ended.
type stepResult struct {
	output  string
	rc      int
	metrics [][2]string
}

// run sends one step to dom0's agent with a time limit of limit (enforced in
// dom0 with SIGKILL; the harness waits a little longer) and waits for its
// END marker. An error means the agent did not answer: the machine is then
// marked broken.
func (v *vm) run(limit time.Duration, step string) (stepResult, error) {
	v.mu.Lock()
	v.nextID++
	id := v.nextID
	v.mu.Unlock()
	b, err := v.send(id, limit, step)
	if err != nil {
		v.broken = true
		return stepResult{}, err
	}
	end := fmt.Sprintf("@@E2E %d END rc=", id)
	e, err := v.waitLine(b+1, time.Now().Add(limit+30*time.Second), func(s string) bool {
		return strings.Contains(s, end)
	})
	if err != nil {
		v.broken = true
		return stepResult{}, fmt.Errorf("step %q did not finish: %w\n%s", step, err, v.tail(b, 200))
	}
	v.mu.Lock()
	out := v.lines[b+1 : e]
	endLine := v.lines[e]
	v.mu.Unlock()
	r := stepResult{output: strings.Join(out, "\n")}
	// The marker may share its line with a kernel message written to the
	// console at the same moment.
	m := endRC.FindStringSubmatch(endLine[strings.Index(endLine, end):])
	if m == nil {
		return r, fmt.Errorf("bad END line %q", endLine)
	}
	r.rc, _ = strconv.Atoi(m[1])
	for _, l := range out {
		if m := metricLine.FindStringSubmatch(l); m != nil {
			r.metrics = append(r.metrics, [2]string{m[1], m[2]})
		}
	}
	return r, nil
}

// sendAttempts bounds how often a step garbled on the serial line is resent.
const sendAttempts = 4

// send writes the step's line to the console and returns the index of the
// agent's BEGIN line. The agent checks the command's length and answers
// GARBLED when the serial line dropped characters: the line is then sent
// again, more slowly.
func (v *vm) send(id int, limit time.Duration, step string) (int, error) {
	line := fmt.Sprintf("@@RUN %d %d %d %s\n", id, int(limit.Seconds()), len(step), step)
	begin := fmt.Sprintf("@@E2E %d BEGIN ", id)
	garbled := fmt.Sprintf("@@E2E %d GARBLED", id)
	for attempt := 1; ; attempt++ {
		v.mu.Lock()
		from := len(v.lines)
		v.mu.Unlock()
		if err := v.write(line, time.Duration(attempt)*20*time.Millisecond); err != nil {
			return 0, err
		}
		i, err := v.waitLine(from, time.Now().Add(60*time.Second), func(s string) bool {
			return strings.Contains(s, begin) || strings.Contains(s, garbled)
		})
		if err != nil {
			return 0, fmt.Errorf("agent did not take step %d %q: %w\n%s", id, step, err, v.tail(from, 60))
		}
		v.mu.Lock()
		got := v.lines[i]
		v.mu.Unlock()
		if strings.Contains(got, begin) {
			if !strings.Contains(got, begin+step+"@@") {
				return 0, fmt.Errorf("agent ran another step than sent: sent %q, got %q", step, got)
			}
			return i, nil
		}
		if attempt == sendAttempts {
			return 0, fmt.Errorf("step %q garbled on the serial line %d times", step, attempt)
		}
	}
}

// write sends s in chunks of 16 bytes with pause between them: Xen keeps
// only a small buffer of serial input for dom0.
func (v *vm) write(s string, pause time.Duration) error {
	for len(s) > 0 {
		n := min(16, len(s))
		if _, err := io.WriteString(v.stdin, s[:n]); err != nil {
			return err
		}
		s = s[n:]
		time.Sleep(pause)
	}
	return nil
}

// stop ends QEMU (the harness's own child) and closes the log.
func (v *vm) stop() {
	v.stdin.Close()
	if v.cmd.Process != nil {
		v.cmd.Process.Kill()
		v.cmd.Wait()
	}
	v.log.Close()
}
