package e2e

// What the speed scenario reads from its steps (fio's terse lines, the
// guest's request counts, dom0's CPU readings), the metrics it derives and
// the table and chart bench.sh publishes. Tested here without Xen.

import (
	"fmt"
	"html"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// speedJob is one fio job of the speed scenario (guest/init knows each
// job's fio options by its name).
type speedJob struct {
	name, desc string
	// big jobs (1 MiB requests) compare throughput; the others IOPS.
	big bool
}

var speedJobs = []speedJob{
	{"seqwrite", "1 MiB seq write QD8", true},
	{"seqread", "1 MiB seq read QD8", true},
	{"randwrite", "4 KiB rand write QD32", false},
	{"randread", "4 KiB rand read QD32", false},
	{"randread_qd1", "4 KiB rand read QD1", false},
}

// jobList is the guest's e2e.fio= argument: every job, in order.
func jobList() string {
	names := make([]string, len(speedJobs))
	for i, j := range speedJobs {
		names[i] = j.name
	}
	return strings.Join(names, ",")
}

// unit is the metric name's suffix for what the job compares.
func (j speedJob) unit() string {
	if j.big {
		return "kibps"
	}
	return "iops"
}

// value is what the job compares, from one run of it.
func (j speedJob) value(r fioJob) float64 {
	if j.big {
		return r.kibps
	}
	return r.iops
}

// format writes a value of the job's unit for people.
func (j speedJob) format(v float64) string {
	if j.big {
		return thousands(v) + " KiB/s"
	}
	return thousands(v) + " IOPS"
}

// fioJob is one run of a fio job against one backend.
type fioJob struct {
	kibps, iops float64 // reads and writes together, as fio measured them
	// requests and bytes are what the guest's disk completed during the
	// job, ramp-up included (from its /sys/block/<disk>/stat).
	requests, bytes uint64
	// cpu is the backend's CPU time over the job, read in dom0 (see cpu_us
	// in dom0/steps.sh); seconds is how long the job took, cue to end.
	cpu     time.Duration
	seconds float64
	// domainCPU is, for blkdom, its whole domain's busy time over the job
	// (/proc/stat, as the kernel backend's cpu is measured), 0 if not read.
	domainCPU time.Duration
}

var (
	// fioTerse is the guest's line with fio's terse (version 3) output.
	fioTerse = regexp.MustCompile(`@@GUEST fio (\S+) (3;[^@]*)@@`)
	// fioDone is the guest's line with its disk's requests during the job.
	fioDone = regexp.MustCompile(`@@GUEST fio-done (\S+) rd_ios=(\d+) rd_sect=(\d+) wr_ios=(\d+) wr_sect=(\d+)@@`)
	// fioCPU is dom0's line with the backend's CPU time over the job.
	fioCPU = regexp.MustCompile(`@@E2E FIOCPU (\S+) us=(-?\d+) seconds=([0-9.]+)@@`)
	// fioDomainCPU is dom0's line with blkdom's domain's busy time.
	fioDomainCPU = regexp.MustCompile(`@@E2E FIODOMAINCPU (\S+) us=(\d+)@@`)
)

// Fields of fio's terse version 3 line, counted from 0.
const (
	terseVersion = 0
	terseJob     = 2
	terseError   = 4
	terseReadKiB = 5 // then bandwidth (KiB/s) and IOPS
	terseWrKiB   = 46
	terseMin     = terseWrKiB + 3
)

// parseFioJob reads the fio_job step's output for job: fio's result, the
// guest's request counts and the backend's CPU time. A job that failed,
// moved nothing or left a number out is an error.
func parseFioJob(out, job string) (fioJob, error) {
	var r fioJob
	var terse, done, cpu []string
	for _, m := range fioTerse.FindAllStringSubmatch(out, -1) {
		if m[1] == job {
			terse = m
		}
	}
	for _, m := range fioDone.FindAllStringSubmatch(out, -1) {
		if m[1] == job {
			done = m
		}
	}
	for _, m := range fioCPU.FindAllStringSubmatch(out, -1) {
		if m[1] == job {
			cpu = m
		}
	}
	if terse == nil || done == nil || cpu == nil {
		return r, fmt.Errorf("job %s: missing fio line (%v), request counts (%v) or CPU time (%v)",
			job, terse != nil, done != nil, cpu != nil)
	}
	f := strings.Split(strings.TrimSpace(terse[2]), ";")
	if len(f) < terseMin || f[terseVersion] != "3" || f[terseJob] != job {
		return r, fmt.Errorf("job %s: not a terse v3 line of this job: %.200q", job, terse[2])
	}
	if f[terseError] != "0" {
		return r, fmt.Errorf("job %s: fio reports error %s", job, f[terseError])
	}
	var nums [4]float64 // read bw, read iops, write bw, write iops
	for i, k := range []int{terseReadKiB + 1, terseReadKiB + 2, terseWrKiB + 1, terseWrKiB + 2} {
		v, err := strconv.ParseFloat(f[k], 64)
		if err != nil || v < 0 {
			return r, fmt.Errorf("job %s: terse field %d: %q", job, k+1, f[k])
		}
		nums[i] = v
	}
	r.kibps, r.iops = nums[0]+nums[2], nums[1]+nums[3]
	var ios [4]uint64 // rd_ios, rd_sect, wr_ios, wr_sect
	for i := range ios {
		v, err := strconv.ParseUint(done[2+i], 10, 64)
		if err != nil {
			return r, fmt.Errorf("job %s: request count %q: %w", job, done[2+i], err)
		}
		ios[i] = v
	}
	r.requests, r.bytes = ios[0]+ios[2], (ios[1]+ios[3])*512
	us, err := strconv.ParseInt(cpu[2], 10, 64)
	if err != nil || us < 0 {
		return r, fmt.Errorf("job %s: CPU time %q µs", job, cpu[2])
	}
	r.cpu = time.Duration(us) * time.Microsecond
	r.seconds, _ = strconv.ParseFloat(cpu[3], 64)
	for _, m := range fioDomainCPU.FindAllStringSubmatch(out, -1) {
		if us, err := strconv.ParseInt(m[2], 10, 64); m[1] == job && err == nil {
			r.domainCPU = time.Duration(us) * time.Microsecond
		}
	}
	if r.iops == 0 || r.kibps == 0 || r.requests == 0 {
		return r, fmt.Errorf("job %s moved nothing: %.0f KiB/s, %.0f IOPS, %d requests", job, r.kibps, r.iops, r.requests)
	}
	return r, nil
}

// The speed scenario's places and backends, in the order of its tables.
var (
	speedPlaces = []string{"dom0", "dd"}
	speedWhos   = []string{"kernel", "blkdom"}
	placeNames  = map[string]string{"dom0": "dom0", "dd": "driver domain"}
)

// speedReport is what one run of the speed scenario measured.
type speedReport struct {
	results       map[string]map[string]fioJob // by "<place>/<who>", then job name
	runtime, ramp int                          // seconds of each job, and of its ramp-up
	places        []string                     // where it measured (nil: speedPlaces)
}

func (r speedReport) get(place, who, job string) (fioJob, bool) {
	v, ok := r.results[place+"/"+who][job]
	return v, ok
}

// cpuPerGiB and cpuPer100k are a run's CPU seconds per GiB moved and per
// 100,000 requests (0 when nothing moved).
func cpuPerGiB(j fioJob) float64 { return perGiB(j, j.cpu) }

// perGiB is CPU time cpu of job j per GiB j moved (0 when nothing moved).
func perGiB(j fioJob, cpu time.Duration) float64 {
	if j.bytes == 0 {
		return 0
	}
	return cpu.Seconds() / (float64(j.bytes) / (1 << 30))
}

func cpuPer100k(j fioJob) float64 {
	if j.requests == 0 {
		return 0
	}
	return j.cpu.Seconds() / (float64(j.requests) / 1e5)
}

// metrics are the scenario's numbers for the metrics file:
// fio_<place>_<who>_<job>_<kibps|iops>, fio_ratio_<place>_<job> (blkdom /
// kernel), <who>_cpu_s_per_gib_<place>_<job>,
// <who>_cpu_s_per_100k_req_<place>_<job> and cpu_ratio_per_gib_<place>_<job>
// (blkdom / kernel); for blkdom also its domain's busy time,
// blkdom_domain_cpu_s_per_gib_<place>_<job>, and
// domain_cpu_ratio_per_gib_<place>_<job> (that / kernel): the same measure
// for both backends.
func (r speedReport) metrics() [][2]string {
	var m [][2]string
	add := func(name, format string, v float64) { m = append(m, [2]string{name, fmt.Sprintf(format, v)}) }
	for _, p := range speedPlaces {
		for _, j := range speedJobs {
			for _, w := range speedWhos {
				if v, ok := r.get(p, w, j.name); ok {
					add(fmt.Sprintf("fio_%s_%s_%s_%s", p, w, j.name, j.unit()), "%.0f", j.value(v))
					add(fmt.Sprintf("%s_cpu_s_per_gib_%s_%s", w, p, j.name), "%.3f", cpuPerGiB(v))
					add(fmt.Sprintf("%s_cpu_s_per_100k_req_%s_%s", w, p, j.name), "%.3f", cpuPer100k(v))
				}
			}
			k, ok1 := r.get(p, "kernel", j.name)
			b, ok2 := r.get(p, "blkdom", j.name)
			if ok2 && b.domainCPU > 0 {
				add(fmt.Sprintf("blkdom_domain_cpu_s_per_gib_%s_%s", p, j.name), "%.3f", perGiB(b, b.domainCPU))
			}
			if ok1 && ok2 {
				add("fio_ratio_"+p+"_"+j.name, "%.2f", j.value(b)/j.value(k))
				if cpuPerGiB(k) > 0 {
					add("cpu_ratio_per_gib_"+p+"_"+j.name, "%.2f", cpuPerGiB(b)/cpuPerGiB(k))
					if b.domainCPU > 0 {
						add("domain_cpu_ratio_per_gib_"+p+"_"+j.name, "%.2f", perGiB(b, b.domainCPU)/cpuPerGiB(k))
					}
				}
			}
		}
	}
	return m
}

// missing lists the place/who/job runs that have no result.
func (r speedReport) missing() []string {
	var miss []string
	places := r.places
	if places == nil {
		places = speedPlaces
	}
	for _, p := range places {
		for _, w := range speedWhos {
			for _, j := range speedJobs {
				if _, ok := r.get(p, w, j.name); !ok {
					miss = append(miss, p+"/"+w+"/"+j.name)
				}
			}
		}
	}
	return miss
}

// machine names where a report was measured.
type machine struct {
	date, commit            string
	cpus                    int
	cpuModel                string
	hostKernel, guestKernel string
}

// benchMachine describes this host, the guests' kernel and the commit.
func benchMachine(t *testing.T) machine {
	m := machine{date: time.Now().UTC().Format("2006-01-02 15:04 UTC"), cpus: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpuModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.hostKernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile(filepath.Join(built.cache, "kver")); err == nil {
		m.guestKernel = strings.TrimSpace(string(b))
	}
	if out, err := command(time.Minute, built.root, "git", "rev-parse", "--short", "HEAD"); err == nil {
		m.commit = strings.TrimSpace(out)
		if st, err := command(time.Minute, built.root, "git", "status", "--porcelain", "--", ".", ":!bench"); err == nil && strings.TrimSpace(st) != "" {
			m.commit += " (with uncommitted changes)"
		}
	} else {
		t.Logf("no commit for the report: %v", err)
	}
	return m
}

// write puts the report's Markdown table (speed.md) and chart (speed.svg)
// in dir.
func (r speedReport) write(dir string, m machine) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "speed.md"), []byte(r.markdown(m)), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "speed.svg"), []byte(r.svg(m)), 0o644)
}

// markdown is the report as a Markdown document: how it was measured, the
// speed table and the CPU table.
func (r speedReport) markdown(m machine) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# blkdom against the kernel's xen-blkback\n\n")
	fmt.Fprintf(&b, "Measured %s at commit %s by the e2e scenario `TestSpeed` (run by `./bench.sh`, "+
		"or by `./test.sh` with `BLKDOM_BENCH_DIR` set): the data path is the one at that commit.\n\n", m.date, m.commit)
	fmt.Fprintf(&b, "Machine: %d × %s, host kernel %s; Xen 4.17 under QEMU (TCG, 2 emulated CPUs), "+
		"dom0 and every domain on Debian's kernel %s. One boot; a Linux PV guest (1 vCPU, 512 MiB) "+
		"runs fio 3.33 (libaio, direct, %d s per job after %d s of ramp-up) on /dev/xvda, a "+
		"%d MiB raw image in dom0's tmpfs served in turn by each backend in dom0. The two driver "+
		"domains (1 vCPU and 256 MiB each) run side by side, each serving its own xvdb, which dom0's "+
		"kernel blkback serves them from a copy of the image each, and their guests take turns job "+
		"by job, the kernel's first for every other job. The emulated CPU has an invariant TSC "+
		"and Xen uses it as its clock (clocksource=tsc).\n\n",
		m.cpus, m.cpuModel, m.hostKernel, m.guestKernel, r.runtime, r.ramp, speedImageMiB)
	fmt.Fprintf(&b, "| job | dom0: kernel | dom0: blkdom | ratio | driver domain: kernel | driver domain: blkdom | ratio |\n")
	fmt.Fprintf(&b, "|---|---:|---:|---:|---:|---:|---:|\n")
	for _, j := range speedJobs {
		fmt.Fprintf(&b, "| %s |", j.desc)
		for _, p := range speedPlaces {
			k, ok1 := r.get(p, "kernel", j.name)
			bl, ok2 := r.get(p, "blkdom", j.name)
			fmt.Fprintf(&b, " %s | %s | %s |", r.cell(j, ok1, k), r.cell(j, ok2, bl), ratioCell(ok1 && ok2, j.value(bl), j.value(k)))
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\nCPU seconds per GiB moved / per 100k requests (requests and bytes as the guest's disk "+
		"counted them, ramp-up included). Kernel: the storage domain's busy time in /proc/stat "+
		"(dom0's: every process and both vCPUs); blkdom: its process's rusage, published in xenstore.\n\n")
	fmt.Fprintf(&b, "| job | dom0: kernel | dom0: blkdom | driver domain: kernel | driver domain: blkdom |\n")
	fmt.Fprintf(&b, "|---|---:|---:|---:|---:|\n")
	for _, j := range speedJobs {
		fmt.Fprintf(&b, "| %s |", j.desc)
		for _, p := range speedPlaces {
			for _, w := range speedWhos {
				if v, ok := r.get(p, w, j.name); ok {
					fmt.Fprintf(&b, " %.2f / %.2f |", cpuPerGiB(v), cpuPer100k(v))
				} else {
					b.WriteString(" - |")
				}
			}
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\n![blkdom against kernel blkback](speed.svg)\n")
	return b.String()
}

func (r speedReport) cell(j speedJob, ok bool, v fioJob) string {
	if !ok {
		return "-"
	}
	return j.format(j.value(v))
}

func ratioCell(ok bool, a, b float64) string {
	if !ok || b == 0 {
		return "-"
	}
	return fmt.Sprintf("**%.2f**", a/b)
}

// thousands writes v rounded, with commas between groups of three digits.
func thousands(v float64) string {
	s := strconv.FormatFloat(v, 'f', 0, 64)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// chartBar is one bar of the chart: its height as a fraction of the
// kernel's result, its label and its colour.
type chartBar struct {
	ratio        float64
	label, color string
}

// svg is the report's chart: for dom0 and the driver domain, each job's
// blkdom result as a fraction of the kernel's (the kernel's bar is 1.0),
// each bar labelled with its measured value.
func (r speedReport) svg(m machine) string {
	const (
		width, panelH, top, left, bottom = 900, 250, 70, 60, 50
		groupW, barW                     = 160, 56
	)
	// The scale: 1.0 (the kernel) and the largest ratio, at least 1.2.
	scale := 1.2
	for _, p := range speedPlaces {
		for _, j := range speedJobs {
			k, ok1 := r.get(p, "kernel", j.name)
			b, ok2 := r.get(p, "blkdom", j.name)
			if ok1 && ok2 && j.value(k) > 0 {
				scale = max(scale, j.value(b)/j.value(k)*1.1)
			}
		}
	}
	height := top + len(speedPlaces)*(panelH+bottom) + 10
	var s strings.Builder
	fmt.Fprintf(&s, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&s, `<rect width="%d" height="%d" fill="white"/>`+"\n", width, height)
	fmt.Fprintf(&s, `<text x="%d" y="22" font-size="16" font-weight="bold">blkdom / kernel xen-blkback (kernel = 1.0), fio in a Linux PV guest</text>`+"\n", left)
	fmt.Fprintf(&s, `<text x="%d" y="42">%s</text>`+"\n", left, html.EscapeString(fmt.Sprintf("%s, commit %s; %d × %s; host %s, domains %s; Xen 4.17 under QEMU TCG",
		m.date, m.commit, m.cpus, m.cpuModel, m.hostKernel, m.guestKernel)))
	fmt.Fprintf(&s, `<rect x="%d" y="50" width="12" height="12" fill="#9e9e9e"/><text x="%d" y="60">kernel xen-blkback</text>`+"\n", left, left+16)
	fmt.Fprintf(&s, `<rect x="%d" y="50" width="12" height="12" fill="#1f77b4"/><text x="%d" y="60">blkdom</text>`+"\n", left+150, left+166)
	for pi, p := range speedPlaces {
		y0 := top + pi*(panelH+bottom) + 20 // the panel's top
		base := y0 + panelH                 // its axis
		y := func(ratio float64) int { return base - int(ratio/scale*float64(panelH)) }
		fmt.Fprintf(&s, `<text x="%d" y="%d" font-weight="bold">%s</text>`+"\n", left, y0-4, placeNames[p])
		fmt.Fprintf(&s, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, base, width-20, base)
		fmt.Fprintf(&s, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#9e9e9e" stroke-dasharray="4 3"/><text x="%d" y="%d" text-anchor="end">1.0</text>`+"\n",
			left, y(1), width-20, y(1), left-4, y(1)+4)
		for ji, j := range speedJobs {
			gx := left + 20 + ji*groupW
			k, ok1 := r.get(p, "kernel", j.name)
			b, ok2 := r.get(p, "blkdom", j.name)
			var bars []chartBar
			if ok1 {
				bars = append(bars, chartBar{1, r.cell(j, ok1, k), "#9e9e9e"})
				if ok2 && j.value(k) > 0 {
					bars = append(bars, chartBar{j.value(b) / j.value(k), r.cell(j, ok2, b), "#1f77b4"})
				}
			}
			for bi, bar := range bars {
				x := gx + bi*(barW+8)
				fmt.Fprintf(&s, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`+"\n", x, y(bar.ratio), barW, base-y(bar.ratio), bar.color)
				fmt.Fprintf(&s, `<text x="%d" y="%d" text-anchor="middle" font-size="10">%s</text>`+"\n", x+barW/2, y(bar.ratio)-16, html.EscapeString(bar.label))
				fmt.Fprintf(&s, `<text x="%d" y="%d" text-anchor="middle" font-size="10">%.2f</text>`+"\n", x+barW/2, y(bar.ratio)-4, bar.ratio)
			}
			fmt.Fprintf(&s, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", gx+barW+4, base+16, html.EscapeString(j.desc))
		}
	}
	s.WriteString("</svg>\n")
	return s.String()
}
