// Package boottest boots Debian's kernel under QEMU with the initramfs
// that "blkdom initramfs" writes, without Xen, and checks from the serial
// console that blkdom runs as PID 1, loads its modules, finds no Xen, and
// ends the machine cleanly: powering off by itself, and rebooting in order
// on Ctrl-Alt-Del.
//
// It runs when BLKDOM_BOOTTEST=1 (the project's test script sets it) and
// then fails, rather than skips, if QEMU or the kernel cannot be had.
package boottest

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// bootTimeout bounds one boot; under TCG on two cores the kernel reaches
// init in about 7 s and blkdom is done 5-10 s later.
const bootTimeout = 3 * time.Minute

func TestBootWithoutXen(t *testing.T) {
	img := image(t)
	log := boot(t, img, "", nil)
	if !strings.Contains(log, `blkdom: level=WARN msg="no Xen hypervisor: there are no guests to serve; powering off"`) {
		t.Error("console lacks the no-Xen line")
	}
	ended(t, log, "power off", "reboot: Power down")

	// Without Xen the Xen drivers refuse to load (ENODEV); everything else
	// of the default set must have loaded.
	m := regexp.MustCompile(`(?m)^blkdom: level=INFO msg="loaded (\d+) of (\d+) modules" kernel=\S+ took=\S+ modules="([^"]*)"$`).FindStringSubmatch(log)
	if m == nil {
		t.Fatal("console lacks the module summary")
	}
	loaded := map[string]bool{}
	for _, name := range strings.Fields(m[3]) {
		loaded[name] = true
	}
	for _, want := range []string{"loop", "dm_mod", "nvme", "sd_mod", "ahci", "virtio_blk", "virtio_scsi", "ext4", "xfs", "jbd2", "libcrc32c"} {
		if !loaded[want] {
			t.Errorf("module %s did not load (loaded: %s)", want, m[3])
		}
	}
	for _, xen := range []string{"xen_evtchn", "xen_gntdev", "xen_gntalloc", "xen_privcmd", "xen_blkfront"} {
		if !strings.Contains(log, `module not loaded" module=`+xen+` err="finit_module: no such device"`) {
			t.Errorf("no line saying that %s refused to load without Xen", xen)
		}
	}
}

// TestCtrlAltDelReboots presses Ctrl-Alt-Del on the machine's keyboard
// while blkdom waits (blkdom.noxen=wait): with Ctrl-Alt-Del handling
// turned off, the kernel sends SIGINT to PID 1, which stops in order and
// reboots, which ends QEMU (-no-reboot).
func TestCtrlAltDelReboots(t *testing.T) {
	img := image(t)
	log := boot(t, img, "blkdom.noxen=wait", func(console func() string, monitor net.Conn) {
		if !waitFor(console, "blkdom.noxen=wait)", bootTimeout) {
			t.Error("blkdom did not wait")
			return
		}
		// A key press can be lost while the emulated keyboard is busy;
		// press again until blkdom reacts.
		for try := 1; try <= 10; try++ {
			if _, err := monitor.Write([]byte("sendkey ctrl-alt-delete\n")); err != nil {
				t.Error(err)
				return
			}
			if waitFor(console, "stop requested", 10*time.Second) {
				t.Logf("Ctrl-Alt-Del pressed %d times", try)
				return
			}
		}
		t.Error("blkdom never saw Ctrl-Alt-Del")
	})
	if !strings.Contains(log, `blkdom: level=INFO msg="stop requested" signal=interrupt then=reboot`) {
		t.Error("console lacks the stop request")
	}
	ended(t, log, "reboot", "reboot: Restarting system")
}

// ended checks that blkdom was PID 1 and ended the machine as it should.
func ended(t *testing.T, log, action, kernelLine string) {
	t.Helper()
	for _, bad := range []string{"Kernel panic", "Attempted to kill init", "panic:", "goroutine "} {
		if strings.Contains(log, bad) {
			t.Errorf("console shows %q", bad)
		}
	}
	for _, want := range []string{
		// A first boot: /init itself, not a successor of an upgrade.
		"\nblkdom: level=INFO msg=\"blkdom is PID 1\" pid=1 exe=/init successor=false\n",
		"\nblkdom: level=INFO msg=\"stopped: " + action + "\"\n",
		kernelLine,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("console lacks %q", want)
		}
	}
}

var (
	imageOnce sync.Once
	imageDir  string
	imageErr  string
)

// images is the kernel and initramfs that the tests boot.
type images struct{ kernel, initrd string }

// image builds blkdom and its initramfs for Debian's current kernel once
// for all tests; scripts/kernel.sh fetches the kernel package the first
// time.
func image(t *testing.T) images {
	if os.Getenv("BLKDOM_BOOTTEST") != "1" {
		t.Skip("set BLKDOM_BOOTTEST=1 to boot Debian's kernel under QEMU")
	}
	imageOnce.Do(func() {
		dir, err := os.MkdirTemp("", "blkdom-boottest")
		if err != nil {
			imageErr = err.Error()
			return
		}
		imageDir = dir
		out, err := exec.Command("../scripts/kernel.sh").Output()
		if err != nil {
			imageErr = "scripts/kernel.sh: " + err.Error()
			return
		}
		kdir := strings.TrimSpace(string(out))
		v, err := os.ReadFile(filepath.Join(kdir, "version"))
		if err != nil {
			imageErr = err.Error()
			return
		}
		version := strings.TrimSpace(string(v))
		blkdom := filepath.Join(dir, "blkdom")
		build := exec.Command("go", "build", "-trimpath", "-o", blkdom, "blkdom")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			imageErr = "go build: " + err.Error() + "\n" + string(out)
			return
		}
		mk := exec.Command(blkdom, "initramfs", "-modules", filepath.Join(kdir, "lib/modules", version),
			"-output", filepath.Join(dir, "initramfs.cpio.gz"))
		if out, err := mk.CombinedOutput(); err != nil {
			imageErr = "blkdom initramfs: " + err.Error() + "\n" + string(out)
			return
		}
		if err := os.Symlink(filepath.Join(kdir, "boot", "vmlinuz-"+version), filepath.Join(dir, "vmlinuz")); err != nil {
			imageErr = err.Error()
		}
	})
	if imageErr != "" {
		t.Fatal(imageErr)
	}
	return images{kernel: filepath.Join(imageDir, "vmlinuz"), initrd: filepath.Join(imageDir, "initramfs.cpio.gz")}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if imageDir != "" {
		os.RemoveAll(imageDir)
	}
	os.Exit(code)
}

// boot runs QEMU until it exits by itself and returns the serial console.
// interact, if not nil, runs meanwhile with the console so far and a
// connection to QEMU's monitor.
func boot(t *testing.T, img images, args string, interact func(console func() string, monitor net.Conn)) string {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatalf("qemu-system-x86_64 (Debian package qemu-system-x86): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	sock := filepath.Join(t.TempDir(), "monitor")
	var out syncBuffer
	cmd := exec.CommandContext(ctx, qemu,
		"-machine", "pc", "-accel", "tcg", "-cpu", "Haswell-noTSX", "-m", "512",
		"-nographic", "-no-reboot", "-serial", "stdio", "-net", "none",
		"-monitor", "unix:"+sock+",server=on,wait=off",
		"-kernel", img.kernel, "-initrd", img.initrd,
		"-append", strings.TrimSpace("console=ttyS0 panic=-1 "+args))
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if interact != nil {
		var monitor net.Conn
		for monitor == nil && ctx.Err() == nil {
			if monitor, err = net.Dial("unix", sock); err != nil {
				time.Sleep(50 * time.Millisecond)
			}
		}
		if monitor != nil {
			interact(out.String, monitor)
			monitor.Close()
		}
	}
	err = cmd.Wait()
	log := strings.ReplaceAll(out.String(), "\r\n", "\n")
	t.Logf("QEMU ran %.1f s; console:\n%s", time.Since(start).Seconds(), log)
	if ctx.Err() != nil {
		t.Fatalf("the machine did not stop within %v", bootTimeout)
	}
	if err != nil {
		t.Fatalf("QEMU: %v", err)
	}
	return log
}

// waitFor waits until the console shows s, for d at most.
func waitFor(console func() string, s string, d time.Duration) bool {
	for deadline := time.Now().Add(d); !strings.Contains(console(), s); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// syncBuffer is QEMU's output, written by exec's copying goroutine and
// read by the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
