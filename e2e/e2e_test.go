package e2e

import (
	"context"
	"fmt"
	"math"
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

// Environment variables the harness reads.
const (
	envEnable = "BLKDOM_E2E"       // "1" runs the tests
	envCache  = "BLKDOM_E2E_CACHE" // download cache (default <repo>/.cache/e2e)
	// envGuestArgs adds kernel arguments to every test guest, for
	// diagnosis: "e2e.blkfront=max_indirect_segments=0" keeps blkfront
	// off indirect requests.
	envGuestArgs = "BLKDOM_E2E_GUEST_ARGS"
	// envXSTrace, if set, has dom0's xenstored trace every request and
	// reply (its --trace-file), which dump then shows. Off by default: the
	// trace is written as it goes, and made every xenstore request of a
	// driver domain about ten times slower (a disk's InitWait took 0.46 s
	// with it, 0.19 s without, in the same scenario).
	envXSTrace = "BLKDOM_E2E_XSTRACE"
	// envClock, "hpet", boots the machine without an invariant TSC, as
	// before 29 Nov: Xen then keeps its default platform timer, and
	// whether the domains' vDSO reads the clock changes from boot to boot
	// (see cpuTSC).
	envClock = "BLKDOM_E2E_CLOCK"
)

// work is dom0's directory for images and logs (see dom0/steps.sh).
const work = "/e2e/work"

// artifacts is what setup built once for all tests.
type artifacts struct {
	root, cache, out string
	dom0Image        string
	// blkdomErr says why out/blkdom could not be built; ddErr why the
	// driver domain's initramfs could not be (it needs the binary too);
	// dd612Err the same for the one with the 6.12 kernel's modules.
	blkdomErr, ddErr, dd612Err error
}

var (
	setupOnce sync.Once
	built     artifacts
	setupErr  error

	// shared is the machine the tests take turns on; a test that leaves it
	// broken makes the next one boot another.
	shared *vm

	metricsMu sync.Mutex
	metrics   [][2]string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.stop()
	}
	if len(metrics) > 0 {
		var b strings.Builder
		for _, kv := range metrics {
			fmt.Fprintf(&b, "%s=%s\n", kv[0], kv[1])
		}
		fmt.Print("e2e metrics:\n" + b.String())
		if built.out != "" {
			os.WriteFile(filepath.Join(built.out, "metrics.txt"), []byte(b.String()), 0o644)
		}
	}
	os.Exit(code)
}

// metric records a number for the summary TestMain prints.
// A metric in combined, recorded again (by another scenario), is
// merged with the value before and listed once: the restart
// metrics cover every restart scenario (a kill -9 and restart in dom0, an
// upgrade in place in dom0 and in a driver domain).
func metric(t *testing.T, name, value string) {
	t.Logf("metric %s=%s", name, value)
	metricsMu.Lock()
	defer metricsMu.Unlock()
	if merge := combined[name]; merge != nil {
		for i, kv := range metrics {
			if kv[0] == name {
				metrics[i][1] = merge(kv[1], value)
				return
			}
		}
	}
	metrics = append(metrics, [2]string{name, value})
}

// combined says how a metric's values merge: the sum of the
// acknowledged writes lost, the longest stall.
var combined = map[string]func(a, b string) string{
	"restart_lost_acked_writes":   func(a, b string) string { return mergeNumbers(a, b, func(x, y float64) float64 { return x + y }) },
	"restart_guest_stall_seconds": func(a, b string) string { return mergeNumbers(a, b, math.Max) },
}

// mergeNumbers is f of a and b as numbers, formatted as the shortest
// decimal; a value that is not a number wins, so that it shows.
func mergeNumbers(a, b string, f func(x, y float64) float64) string {
	x, err := strconv.ParseFloat(a, 64)
	if err != nil {
		return a
	}
	y, err := strconv.ParseFloat(b, 64)
	if err != nil {
		return b
	}
	return strconv.FormatFloat(f(x, y), 'f', -1, 64)
}

// command runs a host command with a time limit and returns its output.
func command(limit time.Duration, dir string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// setup fetches the packages, builds blkdom, the driver domain's initramfs
// and the dom0 image, once.
func setup(t *testing.T) *artifacts {
	t.Helper()
	if os.Getenv(envEnable) != "1" {
		t.Skipf("set %s=1 to boot Xen under QEMU (needs root, ~15 minutes)", envEnable)
	}
	setupOnce.Do(func() { setupErr = build(t) })
	if setupErr != nil {
		t.Fatal(setupErr)
	}
	return &built
}

func build(t *testing.T) error {
	a := &built
	root, err := filepath.Abs("..")
	if err != nil {
		return err
	}
	a.root = root
	a.cache = os.Getenv(envCache)
	if a.cache == "" {
		a.cache = filepath.Join(root, ".cache", "e2e")
	}
	a.out = filepath.Join(a.cache, "run")
	if err := os.MkdirAll(a.out, 0o755); err != nil {
		return err
	}
	env := append(os.Environ(), envCache+"="+a.cache)
	fetch := exec.Command(filepath.Join(root, "e2e", "fetch.sh"))
	fetch.Env = env
	if out, err := fetch.CombinedOutput(); err != nil {
		return fmt.Errorf("fetch.sh: %w\n%s", err, out)
	}

	// blkdom and the driver domain's image: their failure fails only the
	// scenarios that need them.
	blkdom := filepath.Join(root, "out", "blkdom")
	if _, err := command(5*time.Minute, root, "sh", "build.sh"); err != nil {
		a.blkdomErr = err
		a.ddErr = err
		a.dd612Err = err
	} else {
		st, err := os.Stat(blkdom)
		if err != nil {
			return err
		}
		metric(t, "blkdom_binary_bytes", fmt.Sprint(st.Size()))
	}

	args := []string{a.out}
	if a.blkdomErr == nil {
		args = append(args, blkdom+"=/e2e/blkdom")
		// The driver domain's image for the Debian 12 kernel, and one for
		// bookworm-backports' 6.12 kernel (the late-reference scenario).
		for _, k := range []struct {
			kver, image string
			err         *error
		}{
			{"kver", "dd.cpio.gz", &a.ddErr},
			{"kver612", "dd612.cpio.gz", &a.dd612Err},
		} {
			dd, err := ddImage(t, root, blkdom, a.cache, k.kver, filepath.Join(a.out, k.image))
			if err != nil {
				*k.err = err
				continue
			}
			args = append(args, dd+"=/boot/"+k.image)
		}
	}
	mk := exec.Command(filepath.Join(root, "e2e", "mkimages.sh"), args...)
	mk.Env = env
	if out, err := mk.CombinedOutput(); err != nil {
		return fmt.Errorf("mkimages.sh: %w\n%s", err, out)
	}
	a.dom0Image = filepath.Join(a.out, "dom0.cpio.gz")
	return nil
}

// ddImage builds the driver domain's initramfs at image with the modules
// of the kernel whose release the cache's file kver names, and reports its
// size (dd_initramfs_bytes for the Debian 12 kernel's).
func ddImage(t *testing.T, root, blkdom, cache, kver, image string) (string, error) {
	rel, err := os.ReadFile(filepath.Join(cache, kver))
	if err != nil {
		return "", err
	}
	os.Remove(image)
	out, err := command(5*time.Minute, root, blkdom, "initramfs",
		"-modules", filepath.Join(cache, "root", "lib", "modules", strings.TrimSpace(string(rel))),
		"-output", image)
	if err != nil {
		return "", err
	}
	t.Logf("%s", strings.TrimSpace(out))
	st, err := os.Stat(image)
	if err != nil {
		return "", err
	}
	name := "dd_initramfs_bytes"
	if kver != "kver" {
		name = "dd_initramfs_bytes_" + strings.TrimPrefix(kver, "kver")
	}
	metric(t, name, fmt.Sprint(st.Size()))
	return image, nil
}

// session is one test's use of the shared machine.
type session struct {
	t *testing.T
	v *vm
}

// start returns a session on the shared machine, booting it first if there
// is none or the last test left it broken.
func start(t *testing.T) *session {
	a := setup(t)
	if shared != nil && shared.broken {
		t.Log("the previous test left the machine broken: booting a new one")
		shared.stop()
		shared = nil
	}
	if shared == nil {
		log := filepath.Join(a.out, "serial-"+t.Name()+".log")
		v, err := bootVM(t, a.cache, a.dom0Image, log)
		if err != nil {
			t.Fatal(err)
		}
		shared = v
	}
	return &session{t: t, v: shared}
}

// step runs one dom0 step and fails the test if it fails; its output (which
// holds the console logs a failing step dumps) goes into the failure.
func (s *session) step(limit time.Duration, format string, args ...any) string {
	s.t.Helper()
	out, _ := s.run(s.t.Fatalf, limit, format, args...)
	return out
}

// check runs one dom0 step whose failure fails the test but lets it go on
// (a step that does not answer still ends it); it says whether it passed.
func (s *session) check(limit time.Duration, format string, args ...any) (string, bool) {
	s.t.Helper()
	return s.run(s.t.Errorf, limit, format, args...)
}

// run runs one dom0 step and reports its failure with fail.
func (s *session) run(fail func(string, ...any), limit time.Duration, format string, args ...any) (string, bool) {
	s.t.Helper()
	step := fmt.Sprintf(format, args...)
	t0 := time.Now()
	r, err := s.v.run(limit, step)
	if err != nil {
		s.t.Fatalf("step %q: %v", step, err)
	}
	for _, m := range r.metrics {
		metric(s.t, m[0], m[1])
	}
	if r.rc != 0 {
		fail("step %q failed (rc=%d) after %.1fs:\n%s", step, r.rc, time.Since(t0).Seconds(), r.output)
		return r.output, false
	}
	s.t.Logf("step %q ok (%.1fs)", step, time.Since(t0).Seconds())
	return r.output, true
}

// cleanup registers a best-effort dom0 step for the end of the test; if it
// does not complete, the machine is marked broken for the next test.
func (s *session) cleanup(limit time.Duration, step string) {
	s.t.Cleanup(func() {
		if s.v.broken {
			return
		}
		r, err := s.v.run(limit, step)
		if err != nil || r.rc != 0 {
			s.t.Logf("cleanup %q failed (%v, rc=%d): next test reboots\n%s", step, err, r.rc, r.output)
			s.v.broken = true
		}
	})
}

// guest runs a test guest with the xl disk specifications specs through all
// its checks and destroys it.
func (s *session) guest(name string, specs ...string) {
	s.t.Helper()
	s.guestStart(name, specs...)
	s.guestChecks(name)
	s.step(120*time.Second, "domain_destroy %s", name)
}

// guestConfig is what a test guest has besides its disks.
type guestConfig struct {
	vcpus   int    // 0 for one
	memory  int    // MiB, 0 for 256
	ramdisk string // its image in dom0, "" for /boot/guest.cpio.gz
	args    string // kernel arguments for its init, e.g. "e2e.features=xvda"
}

// guestStart creates a test guest (destroyed at the end of the test in any
// case) with the xl disk specifications specs.
func (s *session) guestStart(name string, specs ...string) {
	s.t.Helper()
	s.guestStartWith(name, guestConfig{}, specs...)
}

// guestStartWith is guestStart for a guest configured by c.
func (s *session) guestStartWith(name string, c guestConfig, specs ...string) {
	s.t.Helper()
	s.step(180*time.Second, "%s", s.guestCreate(name, c, specs...))
}

// guestCreate returns the dom0 step that creates a test guest configured by
// c with the xl disk specifications specs, and has the guest destroyed at
// the end of the test in any case.
func (s *session) guestCreate(name string, c guestConfig, specs ...string) string {
	s.cleanup(90*time.Second, "xl destroy "+name+" 2>/dev/null; true")
	create := []string{"guest_create"}
	if args := strings.TrimSpace(c.args + " " + os.Getenv(envGuestArgs)); args != "" {
		create = append([]string{fmt.Sprintf("E2E_GUEST_ARGS='%s'", args)}, create...)
	}
	if c.vcpus > 0 {
		create = append([]string{fmt.Sprintf("E2E_VCPUS=%d", c.vcpus)}, create...)
	}
	if c.memory > 0 {
		create = append([]string{fmt.Sprintf("E2E_MEMORY=%d", c.memory)}, create...)
	}
	if c.ramdisk != "" {
		create = append([]string{"E2E_RAMDISK=" + c.ramdisk}, create...)
	}
	return fmt.Sprintf("%s %s %s", strings.Join(create, " "), name, strings.Join(specs, " "))
}

// guestChecks waits for a test guest's first verified I/O, then for all its
// checks to pass.
func (s *session) guestChecks(name string) {
	s.t.Helper()
	s.step(250*time.Second, "guest_wait_io %s 240", name)
	s.step(310*time.Second, "guest_wait_done %s 300", name)
}

// TestKernelBlkback is the baseline: dom0's kernel xen-blkback serves a
// guest's disk. It proves the harness, the guest's checks and the image
// verification in dom0 with a known-good backend.
func TestKernelBlkback(t *testing.T) {
	s := start(t)
	img := work + "/kernel.img"
	s.step(60*time.Second, "kernel_backend")
	s.step(60*time.Second, "mkimg %s 64", img)
	s.guest("gkernel", "format=raw,vdev=xvda,access=rw,target="+img)
	s.step(120*time.Second, "verify_image %s gkernel xvda", img)
}

// TestDom0Serve is scenario A: "blkdom serve" in dom0, with the kernel's
// xen-blkback unloaded, serves a guest whose disk line is xl's usual one.
// It runs with its eBPF probes on, and "blkdom stat" must show the guest's
// requests and a count of late references.
func TestDom0Serve(t *testing.T) {
	s := start(t)
	if built.blkdomErr != nil {
		t.Fatalf("no blkdom binary: %v", built.blkdomErr)
	}
	img := work + "/serve.img"
	s.step(60*time.Second, "mkimg %s 64", img)
	// Later tests expect dom0's kernel backend back.
	s.cleanup(60*time.Second, "kernel_backend")
	s.cleanup(60*time.Second, "serve_stop")
	s.step(60*time.Second, "serve_start -ebpf")
	s.check(130*time.Second, "probes 0 120")
	s.guestStart("gserve", "format=raw,vdev=xvda,access=rw,target="+img)
	s.guestChecks("gserve")
	checkStats(t, "gserve", s.step(90*time.Second, "stat_wait 0 gserve 1 60"), 1, true)
	s.step(120*time.Second, "domain_destroy gserve")
	s.step(60*time.Second, "serve_stop")
	s.step(120*time.Second, "verify_image %s gserve xvda", img)
}

// envRestartKills is how many times TestDom0Restart kills blkdom (default
// 3); more make a stress run of adoption.
const envRestartKills = "BLKDOM_E2E_RESTART_KILLS"

// TestDom0Restart kills "blkdom serve" in dom0 (kill -9) while a guest
// writes known data with flushes, reads, and a probe times its I/O, and
// starts it again (three times, or envRestartKills), then upgrades it in
// place (a new file at its path, SIGUSR2: it execs it). The new processes
// adopt the connected disk: both sides stay Connected, no request fails,
// and every acknowledged write reads back
// (restart_lost_acked_writes, 0); restart_guest_stall_seconds is the
// probe's longest pause across both.
func TestDom0Restart(t *testing.T) {
	s := start(t)
	if built.blkdomErr != nil {
		t.Fatalf("no blkdom binary: %v", built.blkdomErr)
	}
	img := work + "/restart.img"
	s.step(60*time.Second, "mkimg %s 64", img)
	s.cleanup(60*time.Second, "kernel_backend")
	s.cleanup(60*time.Second, "serve_stop")
	s.step(60*time.Second, "serve_start")
	s.guestStartWith("grestart", guestConfig{args: "e2e.restart=xvda"}, "format=raw,vdev=xvda,access=rw,target="+img)
	s.step(250*time.Second, "restart_ready grestart 240")
	for range envPositive(t, envRestartKills, "kills", 3) {
		s.step(120*time.Second, "serve_kill_restart")
		s.step(60*time.Second, "vbd_connected grestart xvda && sleep 3")
	}
	s.step(120*time.Second, "serve_upgrade")
	s.step(60*time.Second, "vbd_connected grestart xvda && sleep 5")
	s.step(310*time.Second, "restart_result grestart 300")
	s.step(60*time.Second, "vbd_connected grestart xvda")
	s.step(120*time.Second, "domain_destroy grestart")
	s.step(60*time.Second, "serve_stop")
}

// loopLine is how dom0's loop4k step names the loop device it made.
var loopLine = regexp.MustCompile(`@@E2E LOOP (/dev/loop[0-9]+)@@`)

// TestDom0Features checks, from inside a Linux guest with 2 vCPUs, that
// "blkdom serve" in dom0 negotiates what Linux blkback would and that it
// works: persistent grants and indirect descriptors (blkfront's line), one
// hardware queue per vCPU, discard (the image's allocated blocks go down
// after a blkdiscard), a disk with 4 KiB logical sectors (a loop device
// made so in dom0), and an online resize (the image grown in dom0 while
// the guest runs; the guest sees the new size and writes past the old end).
func TestDom0Features(t *testing.T) {
	s := start(t)
	if built.blkdomErr != nil {
		t.Fatalf("no blkdom binary: %v", built.blkdomErr)
	}
	img, img4k := work+"/feat.img", work+"/feat4k.img"
	s.step(60*time.Second, "mkimg %s 64", img)
	s.cleanup(60*time.Second, "kernel_backend")
	m := loopLine.FindStringSubmatch(s.step(60*time.Second, "loop4k %s 64", img4k))
	if m == nil {
		t.Fatal("loop4k named no loop device")
	}
	loop := m[1]
	s.cleanup(60*time.Second, "losetup -d "+loop)
	s.cleanup(60*time.Second, "serve_stop")
	s.step(60*time.Second, "serve_start")
	s.guestStartWith("gfeat", guestConfig{vcpus: 2, args: "e2e.features=xvda"},
		"format=raw,vdev=xvda,access=rw,target="+img,
		"format=raw,vdev=xvdb,access=rw,target="+loop)
	s.step(250*time.Second, "guest_wait_io gfeat 240")
	s.step(260*time.Second, "feat_discard gfeat %s 240", img)
	s.step(260*time.Second, "feat_resize gfeat %s 96 240", img)
	facts := guestFacts(s.step(310*time.Second, "guest_wait_done gfeat 300"))
	keys := vbdKeys(s.step(60*time.Second, "vbd_keys gfeat xvda xvdb"))
	metric(t, "guest_queues", facts["xvda"]["queues"])
	metric(t, "backend_max_queues", keys["xvda backend"]["multi-queue-max-queues"])
	for _, c := range []struct {
		what, got string
		want      match
	}{
		{"guest's CPUs", facts["guest"]["cpus"], is("2")},
		// blkfront's last word on each disk: it prints the line again when
		// the backend fails a flush, with flush disabled.
		{"xvda negotiated", facts["xvda"]["negotiated"], has(negotiated...)},
		{"xvda hardware queues", facts["xvda"]["queues"], atLeast(2)},
		{"xvda discard_granularity", facts["xvda"]["discard_granularity"], atLeast(512)},
		{"xvda logical_block_size", facts["xvda"]["logical_block_size"], is("512")},
		{"xvdb logical_block_size", facts["xvdb"]["logical_block_size"], is("4096")},
		{"xvdb negotiated", facts["xvdb"]["negotiated"], has(negotiated...)},
		{"xvda backend multi-queue-max-queues", keys["xvda backend"]["multi-queue-max-queues"], atLeast(2)},
		{"xvda frontend multi-queue-num-queues", keys["xvda frontend"]["multi-queue-num-queues"], is("2")},
		{"xvda backend feature-persistent", keys["xvda backend"]["feature-persistent"], is("1")},
		{"xvda frontend feature-persistent", keys["xvda frontend"]["feature-persistent"], is("1")},
		{"xvda backend feature-max-indirect-segments", keys["xvda backend"]["feature-max-indirect-segments"], atLeast(32)},
		{"xvda backend feature-discard", keys["xvda backend"]["feature-discard"], is("1")},
		{"xvda backend discard-granularity", keys["xvda backend"]["discard-granularity"], atLeast(512)},
		{"xvda backend sectors after the resize", keys["xvda backend"]["sectors"], is(fmt.Sprint(96 * 2048))},
		{"xvdb backend sector-size", keys["xvdb backend"]["sector-size"], is("4096")},
		{"xvdb backend sectors", keys["xvdb backend"]["sectors"], is(fmt.Sprint(64 * 2048))},
	} {
		if !c.want.ok(c.got) {
			t.Errorf("%s = %q, want %s", c.what, c.got, c.want.desc)
		}
	}
	checkStats(t, "gfeat", s.step(90*time.Second, "stat_wait 0 gfeat 2 60"), 2, false)
	s.step(120*time.Second, "domain_destroy gfeat")
	s.step(60*time.Second, "serve_stop")
	s.step(120*time.Second, "verify_image %s gfeat xvda", img)
	s.step(120*time.Second, "verify_image %s gfeat xvdb", img4k)
}

// ddReady is the driver domain's console line that says blkdom serves: it
// comes after the configured file systems are mounted.
const ddReady = `blkdom: level=INFO msg=serving`

// TestDriverDomain is scenario B: a storage driver domain booted from
// "blkdom initramfs" with blkdom as PID 1 serves a guest two disks: a raw
// disk it owns (its xvdb, served to it by dom0's kernel blkback) and an
// image file on a file system (its xvdc) that it mounts because dom0 wrote
// blkdom/mounts/0 into its xenstore home while it was paused (and
// blkdom/ebpf = 1: its eBPF probes must be on, and "blkdom stat" in dom0
// must show the guest's requests and late_refs counts). One disk is
// detached while the guest runs (the driver domain must close it and remove
// its backend directory); the driver domain is shut down while the other is
// still connected, and must close it, unmount and power off in order.
func TestDriverDomain(t *testing.T) {
	s := start(t)
	if built.ddErr != nil {
		t.Fatalf("no driver domain image: %v", built.ddErr)
	}
	raw, fs := work+"/ddraw.img", work+"/ddfs.img"
	s.step(60*time.Second, "kernel_backend")
	s.step(120*time.Second, "dd_images %s %s", raw, fs)
	s.cleanup(90*time.Second, "xl destroy blkdd 2>/dev/null; true")
	s.step(180*time.Second, "dd_create blkdd /boot/dd.cpio.gz %s %s ebpf=1", raw, fs)
	s.step(250*time.Second, "dd_wait blkdd '%s' 240", ddReady)
	s.check(60*time.Second, "probes blkdd 30")
	s.guestStart("gdd",
		"backend=blkdd,format=raw,vdev=xvda,access=rw,target=/dev/xvdb",
		"backend=blkdd,format=raw,vdev=xvdb,access=rw,target=/mnt/images/guest.img")
	// xl create returned: both disks have reached InitWait.
	ddTimings(t, s.step(60*time.Second, "stamped blkdd"), 2)
	s.guestChecks("gdd")
	checkStats(t, "gdd", s.step(90*time.Second, "stat_wait blkdd gdd 2 60"), 2, true)
	s.step(120*time.Second, "guest_detach gdd xvda blkdd")
	s.step(200*time.Second, "dd_shutdown blkdd 180")
	s.step(120*time.Second, "domain_destroy gdd")
	s.step(120*time.Second, "dd_verify %s %s gdd", raw, fs)
}

// kernelStamp is a console line with the kernel's time stamp.
var kernelStamp = regexp.MustCompile(`\[\s*(\d+\.\d+)\] (.*)`)

// logAttr is one key=value of a blkdom log line (value quoted or not).
var logAttr = regexp.MustCompile(`(\S+?)=("(?:[^"\\]|\\.)*"|\S*)`)

// ddTimings reports, from the driver domain's console (the kernel's time
// stamps on blkdom's lines, which it copies to the kernel log as it
// writes them):
//   - dd_init_to_serving_seconds: from the kernel's "Run /init" to
//     blkdom's "serving" (it watches its backend/vbd);
//   - dd_init_to_main_seconds: to blkdom's first line (the kernel's exec,
//     the Go runtime's start, the first mounts);
//   - dd_startup_<step>_seconds: each step of blkdom's "start-up" line (early: its first mounts, console, signals),
//     as blkdom measured it (modules, xenstore, config);
//   - dd_modules_all_seconds, dd_ebpf_load_seconds: the background
//     loading of every module and of the eBPF probes, as blkdom measured
//     them, and dd_init_to_configured_seconds: to the end of the first
//     application of its configuration (network, mounts);
//   - vbd_to_initwait_seconds: the longest time, among the disks that
//     appeared while blkdom served (the guest's: found after "serving", by
//     the line's stamp less the time from found to the line, which is
//     took= less state= plus step=), from blkdom seeing the vbd in its
//     watch to xenstore's answer to its write of InitWait, as blkdom
//     measured it (took= of "waiting for the frontend");
//   - dd_initramfs_unpack_seconds: the kernel unpacking the initramfs
//     (decompression included), from "Trying to unpack rootfs" to
//     "Freeing initrd memory", before it runs /init;
//   - dd_init_to_all_initwait_seconds: to the last of the guest's disks
//     reaching InitWait (this one includes the time dom0 took to build the
//     guest after the driver domain was ready).
func ddTimings(t *testing.T, console string, disks int) {
	var start, main, serving, configured, initWait, vbdMax, unpack float64
	seen := 0
	for _, l := range strings.Split(console, "\n") {
		m := kernelStamp.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		ts, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			continue
		}
		line := m[2]
		attrs := map[string]string{}
		for _, a := range logAttr.FindAllStringSubmatch(line, -1) {
			attrs[a[1]] = strings.Trim(a[2], `"`)
		}
		if main == 0 && strings.HasPrefix(line, "blkdom: ") {
			main = ts
		}
		switch {
		case strings.HasPrefix(line, "Run /init as init process"):
			start = ts
		case strings.HasPrefix(line, "Trying to unpack rootfs"):
			unpack = ts
		case strings.HasPrefix(line, "Freeing initrd memory") && unpack != 0:
			metric(t, "dd_initramfs_unpack_seconds", fmt.Sprintf("%.3f", ts-unpack))
		case strings.HasPrefix(line, ddReady):
			if serving == 0 {
				serving = ts
			}
		case strings.HasPrefix(line, `blkdom: level=INFO msg=start-up `):
			for k, v := range attrs {
				if _, err := strconv.ParseFloat(v, 64); err == nil && k != "total" {
					metric(t, "dd_startup_"+k+"_seconds", v)
				}
			}
		case strings.HasPrefix(line, `blkdom: level=INFO msg="loaded `):
			metric(t, "dd_modules_all_seconds", attrs["took"])
		case strings.HasPrefix(line, `blkdom: level=INFO msg="eBPF probes on`):
			metric(t, "dd_ebpf_load_seconds", attrs["took"])
		case strings.HasPrefix(line, `blkdom: level=INFO msg=configuration `) && configured == 0:
			configured = ts
		case strings.HasPrefix(line, `blkdom: level=INFO msg="waiting for the frontend"`):
			took, err := strconv.ParseFloat(attrs["took"], 64)
			if err != nil {
				t.Errorf("InitWait line without took=: %s", line)
				continue
			}
			sinceFound := took
			state, err1 := strconv.ParseFloat(attrs["state"], 64)
			step, err2 := strconv.ParseFloat(attrs["step"], 64)
			if err1 == nil && err2 == nil {
				sinceFound = took - state + step
			}
			if serving != 0 && ts-sinceFound >= serving { // one that appeared while serving
				seen++
				initWait = ts
				vbdMax = max(vbdMax, took)
			}
		}
	}
	if start == 0 || serving == 0 {
		t.Errorf("driver domain console has no time-stamped /init start or %q line", ddReady)
		return
	}
	metric(t, "dd_init_to_main_seconds", fmt.Sprintf("%.3f", main-start))
	metric(t, "dd_init_to_serving_seconds", fmt.Sprintf("%.3f", serving-start))
	if configured != 0 {
		metric(t, "dd_init_to_configured_seconds", fmt.Sprintf("%.3f", configured-start))
	}
	if seen < disks {
		t.Errorf("driver domain console shows %d disks found while serving and reaching InitWait, want %d", seen, disks)
		return
	}
	metric(t, "vbd_to_initwait_seconds", fmt.Sprintf("%.3f", vbdMax))
	metric(t, "dd_init_to_all_initwait_seconds", fmt.Sprintf("%.3f", initWait-start))
}

// TestNFSDriverDomain is network storage in a driver domain: dom0 runs an
// NFS server on a bridge (link-local addresses only); a driver domain
// booted from blkdom's initramfs gets a vif on it, brings eth0 up from its
// blkdom/net keys, mounts dom0's export twice from its blkdom/mounts keys
// (NFSv3 through the kernel's own mount client, and NFSv4.2), and serves a
// guest an image file from each. The disk on v3 gets blkdom's default for
// network storage (buffered: the page cache, no O_DIRECT); the one on v4.2
// is marked direct-io-safe by the toolstack (O_DIRECT allowed). The policy
// in force shows in each disk's backend keys and in "blkdom stat". After
// the guest and an orderly shutdown of the driver domain (images closed,
// then the exports unmounted), dom0 verifies both images in the export.
func TestNFSDriverDomain(t *testing.T) {
	s := start(t)
	if built.ddErr != nil {
		t.Fatalf("no driver domain image: %v", built.ddErr)
	}
	s.step(60*time.Second, "nfs_server")
	imgA, imgB := "/srv/nfs/nfs3.img", "/srv/nfs/nfs4.img"
	s.step(60*time.Second, "mkimg %s 64", imgA)
	s.step(60*time.Second, "mkimg %s 64", imgB)
	s.cleanup(90*time.Second, "xl destroy nfsdd 2>/dev/null; true")
	s.step(180*time.Second, "dd_create_net nfsdd /boot/dd.cpio.gz 00:16:3e:5e:00:02 - "+
		"net/eth0/address=169.254.1.2/16 "+
		"mounts/0/device=169.254.1.1:/srv/nfs mounts/0/mountpoint=/mnt/nfs3 mounts/0/fstype=nfs "+
		"mounts/0/options=vers=3,nolock,proto=tcp "+
		"mounts/1/device=169.254.1.1:/srv/nfs mounts/1/mountpoint=/mnt/nfs4 mounts/1/fstype=nfs "+
		"mounts/1/options=vers=4.2,proto=tcp")
	s.step(250*time.Second, "dd_wait nfsdd '%s' 240", ddReady)
	s.step(60*time.Second, "dd_status nfsdd net/eth0 up 30")
	s.step(120*time.Second, "dd_status nfsdd mounts/0 mounted 100")
	s.step(120*time.Second, "dd_status nfsdd mounts/1 mounted 100")
	s.guestStart("gnfs",
		"backend=nfsdd,format=raw,vdev=xvda,access=rw,target=/mnt/nfs3/nfs3.img",
		"backend=nfsdd,format=raw,vdev=xvdb,access=rw,direct-io-safe,target=/mnt/nfs4/nfs4.img")
	s.guestChecks("gnfs")
	keys := vbdKeys(s.step(60*time.Second, "vbd_keys gnfs xvda xvdb"))
	stat := s.step(90*time.Second, "stat_wait nfsdd gnfs 2 60")
	checkStats(t, "gnfs", stat, 2, false)
	_, rows := statRows(stat)
	policies := map[string]string{}
	for _, row := range rows {
		policies[row["devid"]] = row["cache"]
	}
	for _, c := range []struct {
		what, got, want string
	}{
		// libxl 4.17 writes direct-io-safe only for a disk line that says so.
		{"xvda (NFSv3) backend direct-io-safe", keys["xvda backend"]["direct-io-safe"], ""},
		{"xvda (NFSv3) backend blkdom-cache-policy", keys["xvda backend"]["blkdom-cache-policy"], "buffered"},
		{"xvdb (NFSv4.2, direct-io-safe) backend direct-io-safe", keys["xvdb backend"]["direct-io-safe"], "1"},
		{"xvdb (NFSv4.2, direct-io-safe) backend blkdom-cache-policy", keys["xvdb backend"]["blkdom-cache-policy"], "direct"},
		{"blkdom stat cache of xvda (51712)", policies["51712"], "buffered"},
		{"blkdom stat cache of xvdb (51728)", policies["51728"], "direct"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
		}
	}
	s.step(120*time.Second, "domain_destroy gnfs")
	s.step(200*time.Second, "dd_shutdown nfsdd 180")
	s.step(120*time.Second, "verify_image %s gnfs xvda", imgA)
	s.step(120*time.Second, "verify_image %s gnfs xvdb", imgB)
}

// TestNFSUnreachableAtBoot: a driver domain whose NFS export does not
// answer when it boots (dom0's nfsd is stopped) still serves: its local
// disk and a disk whose image lies on the missing mount both reach
// InitWait (xl create of the guest succeeds), the local one connects and
// the other waits in InitWait, while the mount's error is published in
// xenstore. Once the server is back, the mount is retried, the waiting
// disk connects and the guest's checks pass on both; dom0 verifies both
// images after an orderly shutdown.
func TestNFSUnreachableAtBoot(t *testing.T) {
	s := start(t)
	if built.ddErr != nil {
		t.Fatalf("no driver domain image: %v", built.ddErr)
	}
	s.step(60*time.Second, "nfs_server")
	s.cleanup(60*time.Second, "nfs_start 2>/dev/null; true")
	raw, img := work+"/nfsraw.img", "/srv/nfs/late.img"
	s.step(60*time.Second, "mkimg %s 64", raw)
	s.step(60*time.Second, "mkimg %s 64", img)
	s.step(60*time.Second, "kernel_backend")
	s.step(60*time.Second, "nfs_stop")
	s.cleanup(90*time.Second, "xl destroy latedd 2>/dev/null; true")
	s.step(180*time.Second, "dd_create_net latedd /boot/dd.cpio.gz 00:16:3e:5e:00:03 %s "+
		"net/eth0/address=169.254.1.3/16 "+
		"mounts/0/device=169.254.1.1:/srv/nfs mounts/0/mountpoint=/mnt/nfs mounts/0/fstype=nfs "+
		"mounts/0/options=vers=3,nolock,proto=tcp", raw)
	s.step(250*time.Second, "dd_wait latedd '%s' 240", ddReady)
	out := s.step(120*time.Second, "dd_status latedd mounts/0 error 100")
	if m := regexp.MustCompile(`mounts/0/error = "([^"]*)"`).FindStringSubmatch(out); m == nil || m[1] == "" {
		t.Errorf("no mount error published:\n%s", out)
	} else {
		t.Logf("published mount error: %s", m[1])
	}
	s.guestStart("glate",
		"backend=latedd,format=raw,vdev=xvda,access=rw,target=/dev/xvdb",
		"backend=latedd,format=raw,vdev=xvdb,access=rw,target=/mnt/nfs/late.img")
	// xl create returned: both disks reached InitWait. The local one
	// connects; the one on the missing mount waits (the guest's checks
	// start once it has both).
	s.step(90*time.Second, "vbd_state glate xvda 4 60")
	s.step(30*time.Second, "vbd_state glate xvdb 2 0")
	s.step(60*time.Second, "nfs_start")
	s.step(120*time.Second, "dd_status latedd mounts/0 mounted 60")
	s.guestChecks("glate")
	s.step(30*time.Second, "vbd_state glate xvdb 4 0")
	s.step(120*time.Second, "domain_destroy glate")
	s.step(200*time.Second, "dd_shutdown latedd 180")
	s.step(120*time.Second, "verify_image %s glate xvda", raw)
	s.step(120*time.Second, "verify_image %s glate xvdb", img)
}
