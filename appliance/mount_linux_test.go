package appliance

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ext4Loop makes an ext4 file system in a file with Debian's mkfs.ext4 and
// attaches it to a loop device with losetup; it returns the device.
func ext4Loop(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("mount tests need root")
	}
	img := filepath.Join(t.TempDir(), "fs.img")
	run(t, "mkfs.ext4", "-q", "-F", img, "8M")
	dev := strings.TrimSpace(run(t, "losetup", "--find", "--show", img))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// mountinfo returns the source, type and options of what is mounted on
// dir, from /proc/self/mountinfo, or ok false.
func mountinfo(t *testing.T, dir string) (source, fstype, opts string, ok bool) {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ... - type source superopts
		pre, post, _ := strings.Cut(sc.Text(), " - ")
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) >= 6 && len(b) >= 3 && a[4] == dir {
			source, fstype, opts, ok = b[1], b[0], a[5]+","+b[2], true // the last mount on dir wins
		}
	}
	return source, fstype, opts, ok
}

func TestMountSet(t *testing.T) {
	dev := ext4Loop(t)
	dir := t.TempDir()
	mp := filepath.Join(dir, "images") // apply creates it
	s := &mountSet{deviceWait: 200 * time.Millisecond}
	t.Cleanup(func() { s.close() })

	m := Mount{Device: dev, Mountpoint: mp, FSType: "ext4", Options: "noatime,nodev,commit=7"}
	if err := s.apply([]Mount{m}); err != nil {
		t.Fatal(err)
	}
	src, fstype, opts, ok := mountinfo(t, mp)
	if !ok || src != dev || fstype != "ext4" || !strings.Contains(opts, "noatime") ||
		!strings.Contains(opts, "nodev") || !strings.Contains(opts, "commit=7") {
		t.Fatalf("after apply: %v %q %q %q", ok, src, fstype, opts)
	}
	if err := os.WriteFile(filepath.Join(mp, "image.raw"), []byte("disk"), 0o644); err != nil {
		t.Fatal(err)
	}

	// The same configuration again changes nothing.
	if err := s.apply([]Mount{m}); err != nil {
		t.Fatal(err)
	}
	// Changed options: unmounted and mounted again, read-only now; a
	// second entry whose device never appears is reported and left out.
	ro := m
	ro.Options = "ro"
	missing := Mount{Device: "/dev/blkdom-test-absent", Mountpoint: filepath.Join(dir, "other"), FSType: "ext4"}
	if err := s.apply([]Mount{ro, missing}); err == nil || !strings.Contains(err.Error(), "blkdom-test-absent") {
		t.Errorf("apply with a missing device: %v", err)
	}
	if _, _, opts, ok := mountinfo(t, mp); !ok || !strings.HasPrefix(opts, "ro,") {
		t.Errorf("after remount: %v %q", ok, opts)
	}
	if b, err := os.ReadFile(filepath.Join(mp, "image.raw")); err != nil || string(b) != "disk" {
		t.Errorf("file on the remounted fs: %q, %v", b, err)
	}
	if got := s.list(); len(got) != 1 || got[0] != ro {
		t.Errorf("mounted %v, want just %v", got, ro)
	}

	// A busy file system stays mounted when it leaves the configuration.
	busy, err := os.Open(filepath.Join(mp, "image.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.apply(nil); !errors.Is(err, unix.EBUSY) {
		t.Errorf("unmounting a busy fs: %v, want EBUSY", err)
	}
	if _, _, _, ok := mountinfo(t, mp); !ok {
		t.Error("busy fs was unmounted")
	}
	busy.Close()
	if err := s.apply(nil); err != nil {
		t.Fatal(err)
	}
	if _, _, _, ok := mountinfo(t, mp); ok {
		t.Error("fs still mounted after leaving the configuration")
	}

	// close unmounts in reverse order, and nothing mounts afterwards.
	if err := s.apply([]Mount{m}); err != nil {
		t.Fatal(err)
	}
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	if _, _, _, ok := mountinfo(t, mp); ok {
		t.Error("close left the fs mounted")
	}
	if err := s.apply([]Mount{m}); err != nil {
		t.Fatal(err)
	}
	if _, _, _, ok := mountinfo(t, mp); ok {
		t.Error("apply after close mounted")
	}
}

func TestMountWaitsForDevice(t *testing.T) {
	dev := ext4Loop(t)
	link := filepath.Join(t.TempDir(), "late")
	mp := t.TempDir()
	s := &mountSet{deviceWait: 5 * time.Second}
	t.Cleanup(func() { s.close() })
	go func() {
		time.Sleep(300 * time.Millisecond)
		os.Symlink(dev, link) // the disk "appears"
	}()
	if err := s.apply([]Mount{{Device: link, Mountpoint: mp, FSType: "ext4"}}); err != nil {
		t.Fatal(err)
	}
	if _, fstype, _, ok := mountinfo(t, mp); !ok || fstype != "ext4" {
		t.Errorf("not mounted: %v %q", ok, fstype)
	}
}

func TestFSMount(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	fs := fsMount{"tmpfs", "tmpfs", dir, nosuidNodev, "mode=0700,size=1m"}
	if isMountpoint(dir) {
		t.Fatal("not created yet, but a mount point")
	}
	if did, err := fs.mount(); !did || err != nil {
		t.Fatalf("first mount: %v %v", did, err)
	}
	t.Cleanup(func() { unix.Unmount(dir, 0) })
	if !isMountpoint(dir) {
		t.Error("isMountpoint false after mount")
	}
	if _, fstype, opts, ok := mountinfo(t, dir); !ok || fstype != "tmpfs" || !strings.Contains(opts, "nosuid") || !strings.Contains(opts, "mode=700") {
		t.Errorf("mounted %v %q %q", ok, fstype, opts)
	}
	if did, err := fs.mount(); did || err != nil {
		t.Errorf("second mount: %v %v, want already mounted", did, err)
	}
	absent := fsMount{"blkdomfs", "none", filepath.Join(t.TempDir(), "x"), 0, ""}
	if _, err := absent.mount(); err != errAbsent {
		t.Errorf("unknown fs type: %v, want errAbsent", err)
	}
	if !isMountpoint("/") || !isMountpoint("/proc") || isMountpoint(t.TempDir()) {
		t.Error("isMountpoint wrong about /, /proc or a plain directory")
	}
}

// states records what a mountSet publishes, in order.
type states struct {
	mu  sync.Mutex
	got []string
}

func (s *states) publish(rel, state string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := ""
	if err != nil {
		e = " (" + err.Error() + ")"
	}
	s.got = append(s.got, rel+" "+state+e)
}

func (s *states) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

// TestMountRetries: a mount whose device is not there yet fails, is
// published as an error, and is tried again in the background; an image
// path under it is not ready until then, and its waiter is woken when it
// mounts. Stopping unmounts it and says so.
func TestMountRetries(t *testing.T) {
	dev := ext4Loop(t)
	link := filepath.Join(t.TempDir(), "late")
	mp := t.TempDir()
	var st states
	s := &mountSet{deviceWait: 10 * time.Millisecond, retry: 20 * time.Millisecond, retryMax: 80 * time.Millisecond,
		publish: st.publish}
	t.Cleanup(func() { s.close() })
	m := Mount{Device: link, Mountpoint: mp, FSType: "ext4", N: 3}
	if err := s.apply([]Mount{m}); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("first try: %v, want no such file", err)
	}
	woken := make(chan struct{})
	if s.ready(mp+"/guest.img", func() { close(woken) }) {
		t.Fatal("an image on a mount not up yet is ready")
	}
	if !s.ready(filepath.Join(t.TempDir(), "img"), nil) || !s.ready(mp+"x/img", nil) {
		t.Error("paths outside the pending mount are not ready")
	}
	time.Sleep(100 * time.Millisecond) // a few more failed tries
	if err := os.Symlink(dev, link); err != nil {
		t.Fatal(err)
	}
	select {
	case <-woken:
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter was not woken")
	}
	if _, fstype, _, ok := mountinfo(t, mp); !ok || fstype != "ext4" {
		t.Fatalf("not mounted: %v %q", ok, fstype)
	}
	if !s.ready(mp+"/guest.img", nil) {
		t.Error("not ready after the mount")
	}
	// The same configuration again neither remounts nor retries.
	if err := s.apply([]Mount{m}); err != nil {
		t.Fatal(err)
	}
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	got := st.list()
	if len(got) < 3 || !strings.HasPrefix(got[0], "mounts/3 error (mount ") ||
		got[len(got)-2] != "mounts/3 mounted" || got[len(got)-1] != "mounts/3 unmounted" {
		t.Errorf("published %q", got)
	}
}

// TestNetworkMountBackground: an NFS mount never holds up apply: it is
// tried in the background at once, and its failures (here the kernel's
// own, wherever it lacks NFS or no server answers on a link-local
// address nobody has) are published while the tries go on. Leaving the
// configuration stops the tries and wakes a waiting image.
func TestNetworkMountBackground(t *testing.T) {
	mp := filepath.Join(t.TempDir(), "nfs")
	var st states
	s := &mountSet{retry: 20 * time.Millisecond, retryMax: 40 * time.Millisecond, publish: st.publish}
	t.Cleanup(func() { s.close() })
	m := Mount{Device: "169.254.222.222:/srv/nfs", Mountpoint: mp, FSType: "nfs",
		Options: "vers=3,nolock,proto=tcp,soft,timeo=1,retrans=0,retry=0", N: 0}
	t0 := time.Now()
	if err := s.apply([]Mount{m}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > time.Second {
		t.Errorf("apply took %v", d)
	}
	woken := make(chan struct{})
	if s.ready(mp+"/guest.img", func() { close(woken) }) {
		t.Fatal("an image on an NFS mount not up is ready")
	}
	waitFor(t, "a published failure", func() bool {
		got := st.list()
		return len(got) >= 2 && strings.HasPrefix(got[1], "mounts/0 error (mount 169.254.222.222:/srv/nfs on "+mp)
	})
	if got := st.list(); got[0] != "mounts/0 mounting" {
		t.Errorf("first state %q, want mounting", got[0])
	}
	if err := s.apply(nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-woken:
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter was not woken when the mount left the configuration")
	}
	if isMountpoint(mp) {
		t.Error("mounted")
	}
}

// TestHoldUntilMounted: PID 1 serves before it mounts; an image on a
// configured file system is not ready from hold until the first apply
// has mounted it, and its waiter is woken then. Images elsewhere are
// ready at once, and a held mount that leaves the configuration wakes
// its waiter too.
func TestHoldUntilMounted(t *testing.T) {
	dev := ext4Loop(t)
	mp := filepath.Join(t.TempDir(), "images")
	gone := filepath.Join(t.TempDir(), "gone")
	s := &mountSet{deviceWait: time.Second}
	t.Cleanup(func() { s.close() })
	m := Mount{Device: dev, Mountpoint: mp, FSType: "ext4", N: 0}
	s.hold([]Mount{m, {Device: dev, Mountpoint: gone, FSType: "ext4", N: 1}})
	woken, wokenGone := make(chan struct{}), make(chan struct{})
	if s.ready(mp+"/guest.img", func() { close(woken) }) {
		t.Fatal("an image on a held mount is ready")
	}
	if s.ready(gone+"/guest.img", func() { close(wokenGone) }) {
		t.Fatal("an image on a held mount is ready")
	}
	if !s.ready("/dev/xvdb", nil) {
		t.Error("a disk on no configured mount is not ready")
	}
	if err := s.apply([]Mount{m}); err != nil {
		t.Fatal(err)
	}
	for what, ch := range map[string]chan struct{}{"mounted": woken, "left the configuration": wokenGone} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("the waiter of a held mount that %s was not woken", what)
		}
	}
	if !isMountpoint(mp) || !s.ready(mp+"/guest.img", nil) {
		t.Error("not mounted, or its image not ready, after apply")
	}
}
