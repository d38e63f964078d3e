package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/metricsd"
	"blkdom/xensim"
	"blkdom/xensim/testbed"
)

// The demo runs its workload and verifies every byte, for longer than the
// 10 s it gives the device to connect (and then, separately, to close).
func TestDemo(t *testing.T) {
	image := filepath.Join(t.TempDir(), "disk.img")
	out := blkdom(t, 0, "demo", "-duration", "10500ms", "-size", "8M", "-seed", "1", "-image", image)
	if !strings.HasSuffix(out, "every byte verified\n") {
		t.Errorf("demo printed:\n%s", out)
	}
	if fi, err := os.Stat(image); err != nil || fi.Size() != 8<<20 {
		t.Errorf("-image: %v, %v", fi, err)
	}
}

// On SIGINT the demo stops its workload, closes the device, verifies what
// ran, removes its temporary files and says it was interrupted.
func TestDemoInterrupted(t *testing.T) {
	tmp := t.TempDir()
	cmd := exec.Command(binary(t), "demo", "-duration", "1m", "-size", "8M")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	var out strings.Builder
	for lines.Scan() { // up to the workload's start
		out.WriteString(lines.Text() + "\n")
		if strings.HasPrefix(lines.Text(), "negotiated:") {
			break
		}
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for lines.Scan() {
		out.WriteString(lines.Text() + "\n")
	}
	err = cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 1 || stderr.String() != "blkdom demo: interrupted (what ran verified)\n" {
		t.Errorf("exit %d (%v), stderr %q, stdout:\n%s", code, err, stderr.String(), out.String())
	}
	if !strings.Contains(out.String(), "image file: verified") {
		t.Errorf("stdout:\n%s", out.String())
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("left in TMPDIR: %v", left)
	}
}

// The binary the tests run, built once.
var (
	build    sync.Once
	exe      string
	buildErr error
)

func binary(t *testing.T) string {
	t.Helper()
	build.Do(func() {
		dir, err := os.MkdirTemp("", "blkdom-test-")
		if err != nil {
			buildErr = err
			return
		}
		exe = filepath.Join(dir, "blkdom")
		if out, err := exec.Command("go", "build", "-o", exe, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return exe
}

func TestMain(m *testing.M) {
	code := m.Run()
	if exe != "" {
		os.RemoveAll(filepath.Dir(exe))
	}
	os.Exit(code)
}

// runBlkdom runs the binary with args and returns its exit status and
// output.
func runBlkdom(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), o.String(), e.String()
}

// blkdom runs the binary with args, expects exit status want and nothing
// on stderr if want is 0, and returns stdout.
func blkdom(t *testing.T, want int, args ...string) string {
	t.Helper()
	code, stdout, stderr := runBlkdom(t, args...)
	if code != want || want == 0 && stderr != "" {
		t.Fatalf("blkdom %s: exit %d, want %d; stderr:\n%s", strings.Join(args, " "), code, want, stderr)
	}
	return stdout
}

// connectDisk starts a simulated machine whose backend serves a 1 MiB
// image to guest 3 as devid 51728, connects it, and writes 7 pages.
func connectDisk(t *testing.T, opts blkback.Options) *testbed.Bed {
	t.Helper()
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	bed, err := testbed.New(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := bed.Attach(xensim.Disk{Frontend: 3, Devid: 51728, Params: img}, blkfront.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := f.Close(ctx); err != nil {
			t.Error(err)
		}
		bed.Close()
	})
	for range 7 {
		if st, err := f.Do(blkif.OpWrite, 0, make([]byte, 4096)); err != nil || st != 0 {
			t.Fatal(st, err)
		}
	}
	return bed
}

// blkdom stat prints what a backend published, read through xenstore: a
// table that fits 100 columns, every column with -wide, JSON with -json.
func TestStat(t *testing.T) {
	bed := connectDisk(t, blkback.Options{StatsInterval: 20 * time.Millisecond})
	var rows []statRow
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		if rows, err = readStats(bed.Dom0, -1); err != nil {
			t.Fatal(err)
		}
		if len(rows) == 1 && rows[0].s.WrReq == 7 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("blkdom stat read %+v", rows)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, tc := range []struct {
		wide bool
		want map[string]string
	}{
		{false, map[string]string{"backend": "0", "frontend": "3", "device": "xvda", "rd_req": "0", "wr_req": "7",
			"written": "28.0K", "errors": "0"}},
		{true, map[string]string{"devid": "51728", "wr_req": "7", "wr_sect": "56", "written": "28.0K",
			"invalid": "0", "late_refs": "off", "cache": "direct"}},
	} {
		var out bytes.Buffer
		if err := writeTable(&out, rows, tc.wide); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) != 2 {
			t.Fatalf("wide %v: %q", tc.wide, out.String())
		}
		header, values := strings.Fields(lines[0]), strings.Fields(lines[1])
		got := map[string]string{}
		for i, h := range header {
			got[h] = values[i]
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("wide %v: %s = %q, want %q:\n%s", tc.wide, k, got[k], v, out.String())
			}
		}
		if _, ok := got["devid"]; ok != tc.wide {
			t.Errorf("wide %v: devid column %v", tc.wide, ok)
		}
	}
	var out bytes.Buffer
	if err := writeJSON(&out, rows); err != nil {
		t.Fatal(err)
	}
	var list []map[string]any
	if err := json.Unmarshal(out.Bytes(), &list); err != nil || strings.Count(out.String(), "\n") != 1 {
		t.Fatalf("%v: %q", err, out.String())
	}
	if d := list[0]; d["device"] != "xvda" || d["devid"] != 51728.0 || d["wr_sect"] != 56.0 || d["late_refs"] != nil {
		t.Errorf("JSON: %v", d)
	}
}

// The default table fits 100 columns even with 10-digit counts.
func TestStatWidth(t *testing.T) {
	big := statRow{backend: 32767, frontend: 32767, devid: 268439552, device: "xvdzz",
		s: blkback.Stats{RdReq: 9999999999, WrReq: 9999999999, FReq: 9999999999,
			RdSect: 1 << 50, WrSect: 1 << 50, Errors: 999999, LateRefs: 99}}
	big.s.Latency[blkback.LatencyBuckets-1] = 1
	var out bytes.Buffer
	if err := writeTable(&out, []statRow{big, big}, false); err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimRight(out.String(), "\n"), "\n") {
		if len(l) > 100 {
			t.Errorf("%d columns: %q", len(l), l)
		}
	}
}

func TestBytesIEC(t *testing.T) {
	for n, want := range map[uint64]string{0: "0", 1023: "1023", 1024: "1.0K", 28 << 10: "28.0K",
		3 << 29: "1.5G", 1 << 62: "4.0E", 1<<64 - 1: "16.0E"} {
		if got := bytesIEC(n); got != want {
			t.Errorf("bytesIEC(%d) = %q, want %q", n, got, want)
		}
	}
}

// serve -metrics' page, fetched over HTTP and read by Prometheus's own
// parser: blkdom_build_info and a connected disk's series under its name.
func TestMetricsPage(t *testing.T) {
	bed := connectDisk(t, blkback.Options{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go metricsd.Serve(ctx, l, metricsPage(bed.Backend))
	resp, err := http.Get("http://" + l.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	info := families["blkdom_build_info"].GetMetric()
	if len(info) != 1 || info[0].GetGauge().GetValue() != 1 || labelsOf(info[0])["version"] != version {
		t.Errorf("blkdom_build_info: %v", info)
	}
	var written []string
	for _, m := range families["blkdom_written_bytes_total"].GetMetric() {
		l := labelsOf(m)
		written = append(written, fmt.Sprintf("%s %s %s %v", l["frontend"], l["devid"], l["device"], m.GetCounter().GetValue()))
	}
	if want := "3 51728 xvda 28672"; len(written) != 1 || written[0] != want {
		t.Errorf("blkdom_written_bytes_total: %q, want %q", written, want)
	}
}

func labelsOf(m *dto.Metric) map[string]string {
	l := map[string]string{}
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}
