package e2e

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Environment variables of the speed scenario.
const (
	// envFioTime is each fio job's measured seconds (default 15), after a
	// ramp-up of envFioRamp seconds (default 2).
	envFioTime = "BLKDOM_E2E_FIO_SECONDS"
	envFioRamp = "BLKDOM_E2E_FIO_RAMP"
	// envSpeedPlace, "dom0" or "dd", measures only there (both backends),
	// for a quicker look at one place; the report then covers that place.
	envSpeedPlace = "BLKDOM_E2E_SPEED_PLACE"
	// envBenchDir, if set, is where TestSpeed writes its Markdown table
	// and SVG chart (bench.sh sets it to the repository's bench/).
	envBenchDir = "BLKDOM_BENCH_DIR"
	// envDDConfig is blkdom's own settings for its driver domain, as
	// space-separated key=value pairs under blkdom/ (see "blkdom serve
	// -h"), e.g. "engine=workers poll-us=0": to compare designs in the
	// place that matters. Empty: the defaults.
	envDDConfig = "BLKDOM_E2E_DD_CONFIG"
)

// speedImageMiB is the size of the image every backend serves in turn.
const speedImageMiB = 256

// speedBackend is one of the four backends TestSpeed measures: where it
// runs (dom0 or a driver domain), whose it is (the kernel's xen-blkback or
// blkdom), how a guest's disk line names its target (the line's last
// keys: xl reads everything after target= as the target), and how dom0 reads its
// CPU time (see cpu_us in dom0/steps.sh) and how long that reading lags.
type speedBackend struct {
	place, who string
	disk       string
	cpu        string
	settle     int
}

// TestSpeed measures blkdom against the kernel's xen-blkback in one boot:
// a Linux guest (1 vCPU, 512 MiB) runs the fio jobs of speedJobs on its
// xvda, a 256 MiB image served in turn by the kernel's blkback in dom0
// and "blkdom serve" in dom0, then by the kernel's blkback in a storage
// driver domain (kdd/init) and blkdom as PID 1 of a driver domain side by
// side (both with 1 vCPU, serving their xvdb, which dom0's kernel blkback
// serves them from a copy of the image each), their two guests taking
// turns job by job. It records each job's throughput or IOPS, the ratios
// blkdom / kernel, and each backend's CPU time per GiB and per 100k
// requests. Timings never fail it: only failed I/O or missing numbers do.
func TestSpeed(t *testing.T) {
	s := start(t)
	if built.ddErr != nil {
		t.Fatalf("no blkdom binary or driver domain image: %v", built.ddErr)
	}
	runtime, ramp := envPositive(t, envFioTime, "seconds", 15), envPositive(t, envFioRamp, "seconds", 2)
	img := work + "/speed.img"
	s.step(60*time.Second, "kernel_backend")
	s.step(120*time.Second, "fill_image %s %d", img, speedImageMiB)
	results := map[string]map[string]fioJob{} // by place/who, then job
	// A backend's guest: started once, then cued job by job. A guest
	// that fails to start is reported and the other backends still run;
	// its creation is tried twice (on a loaded machine a backend may miss
	// libxl's 10 s to reach InitWait: that is logged).
	guestName := func(b speedBackend) string { return "gfio" + b.place + b.who }
	startGuest := func(b speedBackend) bool {
		t.Helper()
		name := guestName(b)
		create := s.guestCreate(name, guestConfig{memory: 512, ramdisk: "/boot/guestfio.cpio.gz",
			args: fmt.Sprintf("e2e.fio=%s e2e.fiotime=%d e2e.fioramp=%d", jobList(), runtime, ramp)},
			"format=raw,vdev=xvda,access=rw,"+b.disk)
		for attempt := 1; attempt <= 2; attempt++ {
			if _, ok := s.run(t.Logf, 180*time.Second, "%s", create); ok {
				if _, ok := s.check(250*time.Second, "fio_ready %s 240", name); ok {
					results[b.place+"/"+b.who] = map[string]fioJob{}
					return true
				}
				break
			}
			t.Logf("%s %s: creating the guest failed (attempt %d)", b.place, b.who, attempt)
			metric(t, fmt.Sprintf("guest_create_failures_%s_%s", b.place, b.who), fmt.Sprint(attempt))
			s.run(t.Logf, 90*time.Second, "xl destroy %s 2>/dev/null; true", name)
		}
		t.Errorf("%s %s: the guest could not be started", b.place, b.who)
		s.run(t.Logf, 90*time.Second, "xl destroy %s 2>/dev/null; true", name)
		return false
	}
	// runJob cues one job on b's guest and records it; false when the
	// guest stopped answering (its later jobs are not run).
	runJob := func(b speedBackend, j speedJob) bool {
		t.Helper()
		limit := time.Duration(runtime+ramp+120) * time.Second
		out, ok := s.check(limit+time.Duration(b.settle+30)*time.Second, "fio_job %s %s %s %d %d",
			guestName(b), j.name, b.cpu, b.settle, int(limit.Seconds()))
		if !ok {
			return false
		}
		r, err := parseFioJob(out, j.name)
		if err != nil {
			t.Errorf("%s %s, %s: %v\n%s", b.place, b.who, j.name, err, out)
			return true
		}
		results[b.place+"/"+b.who][j.name] = r
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "@@E2E FIOSTATS") {
				t.Logf("%s %s: %s", b.place, b.who, strings.Trim(l, "@ "))
			}
		}
		t.Logf("%s %s %s: %.0f KiB/s, %.0f IOPS, %d requests, %.2f CPU s (its domain busy %.2f s)", b.place, b.who, j.name,
			r.kibps, r.iops, r.requests, r.cpu.Seconds(), r.domainCPU.Seconds())
		return true
	}
	stopGuest := func(b speedBackend) {
		if _, ok := s.check(120*time.Second, "domain_destroy %s", guestName(b)); !ok {
			s.run(t.Logf, 90*time.Second, "xl destroy %s 2>/dev/null; true", guestName(b))
		}
	}
	// round runs every job on one backend, one after the other.
	round := func(b speedBackend) {
		t.Helper()
		if !startGuest(b) {
			return
		}
		for _, j := range speedJobs {
			if !runJob(b, j) {
				break
			}
		}
		stopGuest(b)
	}

	places := speedPlaces
	switch p := os.Getenv(envSpeedPlace); p {
	case "":
	case "dom0", "dd":
		places = []string{p}
	default:
		t.Fatalf("%s=%q: want dom0 or dd", envSpeedPlace, p)
	}
	if slices.Contains(places, "dom0") {
		round(speedBackend{place: "dom0", who: "kernel", disk: "target=" + img, cpu: "proc"})

		s.cleanup(60*time.Second, "kernel_backend")
		s.cleanup(60*time.Second, "serve_stop")
		if _, ok := s.check(60*time.Second, "serve_start"); ok {
			round(speedBackend{place: "dom0", who: "blkdom", disk: "target=" + img, cpu: "blkdom:0", settle: 6})
		}
		s.check(60*time.Second, "serve_stop")
		s.step(60*time.Second, "kernel_backend")
	}
	if !slices.Contains(places, "dd") {
		reportSpeed(t, speedReport{results: results, runtime: runtime, ramp: ramp, places: places})
		return
	}

	// A driver domain's creation is tried twice too: its own disk, which
	// dom0's kernel blkback serves, once missed libxl's 10 s to reach
	// InitWait after the rounds before.
	ddCreate := func(name, ramdisk, image, config string) bool {
		s.cleanup(90*time.Second, "xl destroy "+name+" 2>/dev/null; true")
		for attempt := 1; attempt <= 2; attempt++ {
			if _, ok := s.run(t.Logf, 180*time.Second, "dd_create %s %s %s - %s", name, ramdisk, image, config); ok {
				return true
			}
			t.Logf("%s: creating the driver domain failed (attempt %d)", name, attempt)
			metric(t, "dd_create_failures_"+name, fmt.Sprint(attempt))
			s.run(t.Logf, 120*time.Second, "xl destroy %s 2>/dev/null; true", name)
		}
		t.Errorf("%s: the driver domain could not be created", name)
		return false
	}
	// Both driver domains run side by side, each serving its own copy of
	// the image, and their guests take turns job by job, the kernel's
	// first for every other job: a job's two numbers are minutes apart,
	// not a whole round, and neither backend always goes first.
	// dom0's root tmpfs (half its memory) has no room for a second
	// image; /run is a tmpfs of its own.
	imgB := "/run/speed-b.img"
	s.step(120*time.Second, "cp %s %s", img, imgB)
	kernelDD := speedBackend{place: "dd", who: "kernel", disk: "backend=kdd,target=/dev/xvdb", cpu: "ticks:kdd", settle: 2}
	blkdomDD := speedBackend{place: "dd", who: "blkdom", disk: "backend=bdd,target=/dev/xvdb", cpu: "blkdom:bdd", settle: 6}
	var live []speedBackend
	if ddCreate("kdd", "/boot/kdd.cpio.gz", img, "") {
		if _, ok := s.check(250*time.Second, "dd_wait kdd '@@KDD ready' 240"); ok && startGuest(kernelDD) {
			live = append(live, kernelDD)
		}
	}
	ddConfig := strings.TrimSpace(os.Getenv(envDDConfig))
	if ddConfig != "" {
		t.Logf("blkdom's driver domain with %s", ddConfig)
	}
	bddUp := false
	if ddCreate("bdd", "/boot/dd.cpio.gz", imgB, ddConfig) {
		if _, ok := s.check(250*time.Second, "dd_wait bdd '%s' 240", ddReady); ok {
			bddUp = true
			if startGuest(blkdomDD) {
				live = append(live, blkdomDD)
			}
		}
	}
	for i, j := range speedJobs {
		turn := slices.Clone(live)
		if i%2 == 1 {
			slices.Reverse(turn)
		}
		for _, b := range turn {
			if !runJob(b, j) {
				live = slices.DeleteFunc(live, func(l speedBackend) bool { return l == b })
			}
		}
	}
	for _, b := range []speedBackend{kernelDD, blkdomDD} {
		if _, ok := results[b.place+"/"+b.who]; ok {
			stopGuest(b)
		}
	}
	s.check(120*time.Second, "xl destroy kdd 2>/dev/null; true")
	if bddUp {
		s.check(200*time.Second, "dd_shutdown bdd 180")
	}
	s.check(60*time.Second, "rm -f %s", imgB)

	reportSpeed(t, speedReport{results: results, runtime: runtime, ramp: ramp, places: places})
}

// reportSpeed records the report's metrics and, with envBenchDir, writes
// its table and chart there.
func reportSpeed(t *testing.T, rep speedReport) {
	for _, m := range rep.metrics() {
		metric(t, m[0], m[1])
	}
	if missing := rep.missing(); len(missing) > 0 {
		t.Errorf("no numbers for %v", missing)
	}
	if dir := os.Getenv(envBenchDir); dir != "" {
		if err := rep.write(dir, benchMachine(t)); err != nil {
			t.Error(err)
		}
	}
}

// envPositive reads a positive number (of what: "seconds", "kills") from
// the environment, def when it is not set.
func envPositive(t *testing.T, name, what string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive number of %s", name, v, what)
	}
	return n
}
