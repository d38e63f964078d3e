package e2e

import (
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// seqwriteTerse is fio 3.33's terse line for a 1 MiB sequential write job
// (from a run on a file): 1,746,403 KiB/s, 1,698 IOPS.
const seqwriteTerse = "3;fio-3.33;seqwrite;0;0;0;0;0;0;0;0;0.000000;0.000000;0;0;0.000000;0.000000;1.000000%=0;5.000000%=0;10.000000%=0;20.000000%=0;30.000000%=0;40.000000%=0;50.000000%=0;60.000000%=0;70.000000%=0;80.000000%=0;90.000000%=0;95.000000%=0;99.000000%=0;99.500000%=0;99.900000%=0;99.950000%=0;99.990000%=0;0%=0;0%=0;0%=0;0;0;0.000000;0.000000;0;0;0.000000%;0.000000;0.000000;1755136;1746403;1698;1005;35;2497;118.795869;106.034195;1632;15834;4573.053257;1167.917896;1.000000%=3260;5.000000%=3981;10.000000%=4177;20.000000%=4292;30.000000%=4358;40.000000%=4423;50.000000%=4423;60.000000%=4489;70.000000%=4489;80.000000%=4554;90.000000%=4685;95.000000%=5013;99.000000%=8716;99.500000%=15400;99.900000%=15794;99.950000%=15794;99.990000%=15794;0%=0;0%=0;0%=0;1732;15946;4691.772524;1165.688839;1707350;1789952;100.000000%;1748651.000000;58408.434340;10.358566%;11.952191%;1675;0;0;0.0%;0.0%;0.0%;100.0%;0.0%;0.0%;0.0%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.06%;5.16%;94.26%;0.94%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;vda;9;3472;0;0;68;15238;15334;93.68%"

// seqwriteOut is what the fio_job step prints for it, console time stamps
// and all.
const seqwriteOut = "@@E2E FIOCPU seqwrite us=1234567 seconds=17.52@@\n" +
	"[2026-11-28 13:50:01] @@GUEST fio seqwrite " + seqwriteTerse + "@@\n" +
	"[2026-11-28 13:50:01] @@GUEST fio-done seqwrite rd_ios=2 rd_sect=16 wr_ios=8200 wr_sect=16793600@@\n"

func TestParseFioJob(t *testing.T) {
	r, err := parseFioJob(seqwriteOut, "seqwrite")
	if err != nil {
		t.Fatal(err)
	}
	want := fioJob{kibps: 1746403, iops: 1698, requests: 8202, bytes: (16 + 16793600) * 512,
		cpu: 1234567 * time.Microsecond, seconds: 17.52}
	if r != want {
		t.Errorf("parsed %+v, want %+v", r, want)
	}
	// blkdom's jobs also carry its domain's busy time.
	r, err = parseFioJob(seqwriteOut+"@@E2E FIODOMAINCPU seqread us=1@@\n@@E2E FIODOMAINCPU seqwrite us=2500000@@\n", "seqwrite")
	if want.domainCPU = 2500 * time.Millisecond; err != nil || r != want {
		t.Errorf("with the domain's time: parsed %+v, %v; want %+v", r, err, want)
	}
	for _, c := range []struct{ what, out, job string }{
		{"another job's lines", seqwriteOut, "seqread"},
		{"no CPU line", strings.SplitN(seqwriteOut, "\n", 2)[1], "seqwrite"},
		{"no request counts", strings.Replace(seqwriteOut, "fio-done", "fio-gone", 1), "seqwrite"},
		{"fio's error", strings.Replace(seqwriteOut, ";seqwrite;0;0;", ";seqwrite;0;5;", 1), "seqwrite"},
		{"a shifted terse line", strings.Replace(seqwriteOut, "@@GUEST fio seqwrite 3;", "@@GUEST fio seqwrite 3;x;", 1), "seqwrite"},
		{"a truncated line", strings.Replace(seqwriteOut, seqwriteTerse, seqwriteTerse[:300], 1), "seqwrite"},
		{"no I/O", strings.Replace(seqwriteOut, ";1755136;1746403;1698;", ";0;0;0;", 1), "seqwrite"},
		{"a negative CPU time", strings.Replace(seqwriteOut, "us=1234567", "us=-5", 1), "seqwrite"},
	} {
		if r, err := parseFioJob(c.out, c.job); err == nil {
			t.Errorf("%s: parsed %+v, want an error", c.what, r)
		}
	}
}

// fullReport has every run: blkdom at half the kernel's speed and twice
// its CPU time, each moving 1 GiB in 100k requests.
func fullReport() speedReport {
	r := speedReport{results: map[string]map[string]fioJob{}, runtime: 15, ramp: 2}
	for _, p := range speedPlaces {
		for wi, w := range speedWhos {
			jobs := map[string]fioJob{}
			for _, j := range speedJobs {
				jobs[j.name] = fioJob{kibps: 1000 / float64(wi+1), iops: 400 / float64(wi+1),
					requests: 1e5, bytes: 1 << 30, cpu: time.Duration(wi+1) * time.Second}
			}
			r.results[p+"/"+w] = jobs
		}
	}
	return r
}

func TestSpeedMetrics(t *testing.T) {
	r := fullReport()
	got := map[string]string{}
	for _, m := range r.metrics() {
		got[m[0]] = m[1]
	}
	want := map[string]string{
		"fio_ratio_dom0_seqwrite":                  "0.50",
		"fio_ratio_dd_randread_qd1":                "0.50",
		"fio_dom0_kernel_seqread_kibps":            "1000",
		"fio_dd_blkdom_randread_iops":              "200",
		"blkdom_cpu_s_per_gib_dd_seqread":          "2.000",
		"kernel_cpu_s_per_100k_req_dom0_randwrite": "1.000",
		"cpu_ratio_per_gib_dd_randread":            "2.00",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	// Every ratio the issue names.
	for _, p := range speedPlaces {
		for _, j := range speedJobs {
			if _, ok := got["fio_ratio_"+p+"_"+j.name]; !ok {
				t.Errorf("no fio_ratio_%s_%s", p, j.name)
			}
		}
	}
	if m := r.missing(); len(m) != 0 {
		t.Errorf("missing %v in a full report", m)
	}
	delete(r.results["dd/blkdom"], "randwrite")
	if m := r.missing(); strings.Join(m, " ") != "dd/blkdom/randwrite" {
		t.Errorf("missing %v, want dd/blkdom/randwrite", m)
	}
	for _, m := range r.metrics() {
		if m[0] == "fio_ratio_dd_randwrite" {
			t.Errorf("a ratio without blkdom's run: %v", m)
		}
	}
}

func TestSpeedReportFiles(t *testing.T) {
	r := fullReport()
	delete(r.results["dd/blkdom"], "randwrite")
	dir := t.TempDir()
	m := machine{date: "2026-11-28 14:00 UTC", commit: "abc1234", cpus: 2, cpuModel: "Some <CPU> & Co",
		hostKernel: "6.1.0-1-amd64", guestKernel: "6.1.0-56-amd64"}
	if err := r.write(dir, m); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "speed.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"| 1 MiB seq write QD8 | 1,000 KiB/s | 500 KiB/s | **0.50** | 1,000 KiB/s | 500 KiB/s | **0.50** |",
		"| 4 KiB rand write QD32 | 400 IOPS | 200 IOPS | **0.50** | 400 IOPS | - | - |",
		"| 4 KiB rand read QD1 | 1.00 / 1.00 | 2.00 / 2.00 | 1.00 / 1.00 | 2.00 / 2.00 |",
		"at commit abc1234", "2 × Some <CPU> & Co", "](speed.svg)",
	} {
		if !strings.Contains(string(md), line) {
			t.Errorf("speed.md lacks %q:\n%s", line, md)
		}
	}
	f, err := os.Open(filepath.Join(dir, "speed.svg"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Well-formed XML with one bar per run (19 of 20) besides the
	// background and the legend's two squares.
	d := xml.NewDecoder(f)
	rects := 0
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("speed.svg: %v", err)
		}
		if e, ok := tok.(xml.StartElement); ok && e.Name.Local == "rect" {
			rects++
		}
	}
	if rects != 3+19 {
		t.Errorf("speed.svg has %d rectangles, want %d", rects, 3+19)
	}
}

func TestThousands(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 72034.4: "72,034", 1234567: "1,234,567", -4500: "-4,500"} {
		if got := thousands(v); got != want {
			t.Errorf("thousands(%v) = %q, want %q", v, got, want)
		}
	}
}
