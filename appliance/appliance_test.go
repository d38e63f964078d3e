package appliance

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"blkdom/blkback"
	"blkdom/xensim/xenstored/xenstoredtest"
	"blkdom/xs"
)

func TestConsole(t *testing.T) {
	var out, kmsg bytes.Buffer
	c := &console{out: &out}
	var level slog.LevelVar
	log := NewLogger(c, &level)
	log.Info("before kmsg", "n", 1)
	// The kernel echoes records below level 4 (warning) on the console,
	// as with the kernel's "quiet".
	c.use(&out, &kmsg, 4)
	log.Debug("hidden")
	level.Set(slog.LevelDebug)
	log.Debug("shown")
	log.Info("info")
	log.Warn("warned")
	log.Error("failed")
	want := "blkdom: level=INFO msg=\"before kmsg\" n=1\nblkdom: level=DEBUG msg=shown\n" +
		"blkdom: level=INFO msg=info\nblkdom: level=WARN msg=warned\n"
	if out.String() != want {
		t.Errorf("console got %q, want %q (the error: the kernel's echo)", out.String(), want)
	}
	// dmesg -l err finds the error, -l warn the warning.
	wantK := "<15>blkdom: level=DEBUG msg=shown\n<15>blkdom: level=INFO msg=info\n" +
		"<12>blkdom: level=WARN msg=warned\n<11>blkdom: level=ERROR msg=failed\n"
	if kmsg.String() != wantK {
		t.Errorf("kmsg got %q, want %q", kmsg.String(), wantK)
	}
	// A kernel log that refuses a line costs the console nothing.
	c.use(&out, failWriter{}, 4)
	out.Reset()
	log.Warn("still here")
	if out.String() != "blkdom: level=WARN msg=\"still here\"\n" {
		t.Errorf("console got %q", out.String())
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, syscall.EINVAL }

func TestDetectXen(t *testing.T) {
	for _, tc := range []struct {
		files map[string]string
		want  bool
	}{
		{map[string]string{}, false},
		{map[string]string{"sys/hypervisor/type": "kvm\n"}, false},
		{map[string]string{"sys/hypervisor/type": "xen\n"}, true},
		{map[string]string{"proc/xen/capabilities": ""}, true},
		{map[string]string{"dev/xen/xenbus": ""}, true},
		{map[string]string{"dev/xen/evtchn": ""}, false},
	} {
		root := t.TempDir()
		for name, data := range tc.files {
			p := filepath.Join(root, name)
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if how, got := detectXen(root); got != tc.want || got == (how == "") {
			t.Errorf("%v: detectXen = %q, %v; want %v", tc.files, how, got, tc.want)
		}
	}
}

func TestKernelArg(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cmdline")
	must(t, os.WriteFile(p, []byte("console=ttyS0 blkdom.noxen=x panic=-1 blkdom.noxen=wait quiet\n"), 0o644))
	for name, want := range map[string]string{NoXenArg: "wait", "console": "ttyS0", "quiet": "", "panic": "-1", "blkdom": ""} {
		if got := kernelArg(p, name); got != want {
			t.Errorf("kernelArg(%q) = %q, want %q", name, got, want)
		}
	}
	if got := kernelArg(filepath.Join(t.TempDir(), "absent"), "console"); got != "" {
		t.Errorf("no cmdline file gives %q", got)
	}
}

func TestRequestPowerOffRefusesForeignInit(t *testing.T) {
	// PID 1 here is not this test binary; asking it must fail without
	// signalling it (if it were signalled, this machine would stop).
	if err := RequestPowerOff(); err == nil {
		t.Fatal("RequestPowerOff signalled a PID 1 that is not blkdom")
	}
}

func TestStopSignals(t *testing.T) {
	if stopSignals[syscall.SIGTERM] != powerOff || stopSignals[syscall.SIGPWR] != powerOff || stopSignals[syscall.SIGINT] != restart {
		t.Errorf("signal policy: %v", stopSignals)
	}
	if powerOff.String() != "power off" || restart.String() != "reboot" {
		t.Error("action names")
	}
}

// TestReapOrphans runs the reaper in a child process that is a
// subreaper, as PID 1 is for everyone: orphans re-parented to it must not
// stay zombies.
func TestReapOrphans(t *testing.T) {
	if os.Getenv("BLKDOM_REAPER_CHILD") == "1" {
		reaperChild()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReapOrphans$")
	cmd.Env = append(os.Environ(), "BLKDOM_REAPER_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "zombies before 3 after 0") {
		t.Fatalf("reaper child: %v\n%s", err, out)
	}
}

func reaperChild() {
	// Adopt orphaned descendants, as PID 1 adopts every orphan.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		panic(err)
	}
	// sh starts three orphans that exit at once and exits itself; wait
	// for sh (our own child) before any reaping runs.
	p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", "true & true & true & exit 0"},
		&os.ProcAttr{Files: []*os.File{nil, os.Stdout, os.Stderr}})
	if err != nil {
		panic(err)
	}
	if _, err := p.Wait(); err != nil {
		panic(err)
	}
	time.Sleep(300 * time.Millisecond)
	before := zombies()
	sigchld := make(chan os.Signal, 1)
	go reapOrphans(sigchld)
	deadline := time.Now().Add(5 * time.Second)
	for zombies() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	os.Stdout.WriteString("zombies before " + strconv.Itoa(before) + " after " + strconv.Itoa(zombies()) + "\n")
}

// zombies counts this process's children that are zombies.
func zombies() int {
	n := 0
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(os.Getpid()) {
			n++
		}
	}
	return n
}

// TestConfigFromXenstore runs the configuration path against the Go
// xenstored: the driver domain (domid 7) reads blkdom/ at start, and a
// toolstack's later writes change the log level and mount an ext4 file
// system on a loop device; stopping unmounts it.
func TestConfigFromXenstore(t *testing.T) {
	s, _, dom0 := xenstoredtest.Start(t)
	home := "/local/domain/7"
	must(t, dom0.Write(home+"/blkdom/log-level", "warn"))
	must(t, dom0.SetPerms(home, []xs.Perm{{Dom: 7, Access: xs.AccessNone}}))
	must(t, dom0.SetPerms(home+"/blkdom", []xs.Perm{{Dom: 7, Access: xs.AccessNone}}))
	must(t, dom0.SetPerms(home+"/blkdom/log-level", []xs.Perm{{Dom: 7, Access: xs.AccessNone}}))
	nc, err := s.DialAs(7)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	m := &machine{xs: xs.NewClient(nc)}
	t.Cleanup(func() { m.xs.Close() })
	m.console.out = &out // read only after the watch has stopped
	m.log = NewLogger(&m.console, &m.level)
	m.mounts.deviceWait = time.Second

	m.watchConfig()
	if m.level.Level() != slog.LevelWarn {
		t.Errorf("level %v after start, want warn", m.level.Level())
	}
	h := &Host{XS: m.xs, Log: m.log, cfg: &m.cfg}

	dev := ext4Loop(t)
	mp := filepath.Join(t.TempDir(), "images")
	for k, v := range map[string]string{
		"cache": "buffered", "mounts/0/device": dev, "mounts/0/mountpoint": mp, "mounts/0/fstype": "ext4",
		"log-level": "debug",
	} {
		must(t, dom0.Write(home+"/blkdom/"+k, v))
	}
	waitFor(t, "the new configuration", func() bool {
		c := h.Config()
		return c.LogLevel == slog.LevelDebug && c.Cache == blkback.CacheBuffered && len(c.Mounts) == 1 && isMountpoint(mp)
	})
	if src, _, _, _ := mountinfo(t, mp); src != dev {
		t.Errorf("%s mounted from %q, want %s", mp, src, dev)
	}

	must(t, dom0.Rm(home+"/blkdom/mounts"))
	waitFor(t, "the unmount", func() bool { return !isMountpoint(mp) })

	must(t, dom0.Write(home+"/blkdom/mounts/3/device", dev))
	must(t, dom0.Write(home+"/blkdom/mounts/3/fstype", "ext4"))
	must(t, dom0.Write(home+"/blkdom/mounts/3/mountpoint", mp))
	waitFor(t, "the mount", func() bool { return isMountpoint(mp) })
	m.watch.Close()
	must(t, m.mounts.close())
	if isMountpoint(mp) {
		t.Error("still mounted after close")
	}
	if !strings.Contains(out.String(), `msg=configuration log-level=DEBUG cache=buffered mounts="[`+dev+` on `+mp) {
		t.Errorf("log lacks the applied configuration:\n%s", out.String())
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
