// Package boottest boots Debian's kernel under QEMU with the initramfs
// that "blkdom initramfs" writes, without Xen, and checks from the serial
// console that blkdom ran as PID 1, loaded its modules, found no Xen and
// powered the machine off cleanly.
//
// It runs when BLKDOM_BOOTTEST=1 (the project's test script sets it) and
// then fails, rather than skips, if QEMU or the kernel cannot be had.
package boottest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// bootTimeout bounds one boot; under TCG on two cores the kernel reaches
// init in 5-10 s and blkdom powers off a few seconds later.
const bootTimeout = 3 * time.Minute

func TestBootWithoutXen(t *testing.T) {
	if os.Getenv("BLKDOM_BOOTTEST") != "1" {
		t.Skip("set BLKDOM_BOOTTEST=1 to boot Debian's kernel under QEMU")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatalf("qemu-system-x86_64 (Debian package qemu-system-x86): %v", err)
	}
	kernelDir, version := kernel(t)
	dir := t.TempDir()
	blkdom := filepath.Join(dir, "blkdom")
	build := exec.Command("go", "build", "-trimpath", "-o", blkdom, "blkdom")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	initrd := filepath.Join(dir, "initramfs.cpio.gz")
	mk := exec.Command(blkdom, "initramfs", "--modules", filepath.Join(kernelDir, "lib/modules", version), "--output", initrd)
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("blkdom initramfs: %v\n%s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	var console bytes.Buffer
	start := time.Now()
	cmd := exec.CommandContext(ctx, qemu,
		"-machine", "pc", "-accel", "tcg", "-cpu", "Haswell-noTSX", "-m", "512",
		"-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio", "-net", "none",
		"-kernel", filepath.Join(kernelDir, "boot", "vmlinuz-"+version),
		"-initrd", initrd,
		"-append", "console=ttyS0 panic=-1")
	cmd.Stdout = &console
	cmd.Stderr = &console
	err = cmd.Run()
	log := strings.ReplaceAll(console.String(), "\r\n", "\n")
	t.Logf("QEMU ran %.1f s; console:\n%s", time.Since(start).Seconds(), log)
	if ctx.Err() != nil {
		t.Fatalf("the machine did not stop within %v", bootTimeout)
	}
	if err != nil {
		t.Fatalf("QEMU: %v", err)
	}
	for _, bad := range []string{"Kernel panic", "Attempted to kill init", "panic:", "goroutine "} {
		if strings.Contains(log, bad) {
			t.Errorf("console shows %q", bad)
		}
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^blkdom: level=INFO msg="blkdom is PID 1" pid=1$`),
		regexp.MustCompile(`(?m)^blkdom: level=WARN msg="no Xen hypervisor: there are no guests to serve; powering off"$`),
		regexp.MustCompile(`(?m)^blkdom: level=INFO msg="stopped: power off"$`),
		regexp.MustCompile(`(?m)reboot: Power down$`),
	} {
		if !want.MatchString(log) {
			t.Errorf("console lacks a line matching %s", want)
		}
	}
	// Without Xen the Xen drivers refuse to load (ENODEV); everything else
	// of the default set must have loaded.
	m := regexp.MustCompile(`(?m)^blkdom: level=INFO msg="loaded (\d+) of (\d+) modules" kernel=\S+ modules="([^"]*)"$`).FindStringSubmatch(log)
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

// kernel runs scripts/kernel.sh, which fetches Debian's current kernel
// package once, and returns its unpacked tree and version.
func kernel(t *testing.T) (dir, version string) {
	t.Helper()
	out, err := exec.Command("../scripts/kernel.sh").Output()
	if err != nil {
		t.Fatalf("scripts/kernel.sh: %v\n%s", err, out)
	}
	dir = strings.TrimSpace(string(out))
	v, err := os.ReadFile(filepath.Join(dir, "version"))
	if err != nil {
		t.Fatal(err)
	}
	return dir, strings.TrimSpace(string(v))
}
