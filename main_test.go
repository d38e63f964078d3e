package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
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

// blkdom stat prints what a backend published, read through xenstore.
func TestStat(t *testing.T) {
	bed, err := testbed.New(t.TempDir(), blkback.Options{StatsInterval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer bed.Close()
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
	for range 7 {
		if st, err := f.Do(blkif.OpWrite, 0, make([]byte, 4096)); err != nil || st != 0 {
			t.Fatal(st, err)
		}
	}
	want := []string{"0", "3", "51728", "0", "7", "0", "0", "0", "56"}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var out bytes.Buffer
		if err := printStats(&out, bed.Dom0, -1); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) == 2 && strings.Join(strings.Fields(lines[1])[:len(want)], " ") == strings.Join(want, " ") {
			if !strings.HasSuffix(lines[1], "off") {
				t.Errorf("late_refs without probes: %q", lines[1])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("blkdom stat printed:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
