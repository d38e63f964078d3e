package appliance

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// fsMount is one file system the appliance mounts for itself. The lists
// below are the driver domain's file system layout.
type fsMount struct {
	fstype, source, target string
	flags                  uintptr
	data                   string
}

func (m fsMount) String() string { return m.fstype + " on " + m.target }

const (
	nosuidNodev       = unix.MS_NOSUID | unix.MS_NODEV
	nosuidNodevNoexec = nosuidNodev | unix.MS_NOEXEC
)

// earlyMounts come first: everything else needs them.
var earlyMounts = []fsMount{
	{"proc", "proc", "/proc", nosuidNodevNoexec, ""},
	{"sysfs", "sysfs", "/sys", nosuidNodevNoexec, ""},
	{"devtmpfs", "devtmpfs", "/dev", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "devpts", "/dev/pts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666"},
	{"tmpfs", "tmpfs", "/run", nosuidNodev, "mode=0755"},
	{"tmpfs", "tmpfs", "/tmp", nosuidNodev, "mode=1777"},
}

// lateMounts come after the modules: xenfs is one, and the eBPF probes
// want bpffs and tracefs. Each may be absent (no Xen, no BPF).
var lateMounts = []fsMount{
	{"xenfs", "xenfs", "/proc/xen", 0, ""},
	{"bpf", "bpffs", "/sys/fs/bpf", nosuidNodevNoexec, "mode=0700"},
	{"tracefs", "tracefs", "/sys/kernel/tracing", nosuidNodevNoexec, ""},
}

// errAbsent says that the kernel does not have a file system type.
var errAbsent = errors.New("file system type not in this kernel")

// mount mounts m unless something is mounted on its target already
// (the kernel or an earlier init may have done it); it creates the target
// directory when it can. It returns false when it found m mounted.
func (m fsMount) mount() (bool, error) {
	if isMountpoint(m.target) {
		return false, nil
	}
	os.MkdirAll(m.target, 0o755) // fails in /proc and /sys; mount says why
	err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
	switch {
	case errors.Is(err, unix.EBUSY):
		return false, nil
	case errors.Is(err, unix.ENODEV):
		return false, errAbsent
	case err != nil:
		return false, fmt.Errorf("mount %s: %w", m, err)
	}
	return true, nil
}

// isMountpoint reports whether dir is the root of a mount: it lies on
// another device than its parent (as mountpoint(1) decides without /proc).
func isMountpoint(dir string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(dir), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev || st.Ino == parent.Ino
}

// mountSet keeps the file systems of Config.Mounts mounted: apply
// mounts what is new and unmounts what left the configuration; close
// unmounts everything at stop. It knows only the mounts it made.
type mountSet struct {
	mu      sync.Mutex
	mounted []Mount // in mount order
	closed  bool
	// deviceWait is how long a mount waits for its device node to
	// appear: disks show up while their drivers probe.
	deviceWait time.Duration
}

// apply makes the mounted set equal to want, as far as it can: a file
// system that cannot be unmounted (an image on it is open) stays, and
// a new one that cannot be mounted is left out until the next apply.
func (s *mountSet) apply(want []Mount) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	keep := map[Mount]bool{}
	for _, m := range want {
		keep[m] = true
	}
	var errs []error
	for i := len(s.mounted) - 1; i >= 0; i-- {
		if m := s.mounted[i]; !keep[m] {
			if err := unmount(m); err != nil {
				errs = append(errs, err)
				continue
			}
			s.mounted = append(s.mounted[:i], s.mounted[i+1:]...)
		}
	}
	have := map[string]bool{}
	for _, m := range s.mounted {
		have[m.Mountpoint] = true
	}
	for _, m := range want {
		if have[m.Mountpoint] {
			continue // mounted already, or an old mount is still busy there
		}
		if err := s.mount(m); err != nil {
			errs = append(errs, err)
			continue
		}
		have[m.Mountpoint] = true
		s.mounted = append(s.mounted, m)
	}
	return errors.Join(errs...)
}

// close unmounts everything in reverse order; later applies do nothing.
func (s *mountSet) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	var errs []error
	for i := len(s.mounted) - 1; i >= 0; i-- {
		errs = append(errs, unmount(s.mounted[i]))
	}
	s.mounted = nil
	return errors.Join(errs...)
}

func (s *mountSet) list() []Mount {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Mount(nil), s.mounted...)
}

func (s *mountSet) mount(m Mount) error {
	flags, data, err := mountOptions(m.Options)
	if err != nil {
		return fmt.Errorf("mount %s: %w", m, err)
	}
	for deadline := time.Now().Add(s.deviceWait); ; time.Sleep(100 * time.Millisecond) {
		if _, err = os.Stat(m.Device); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("mount %s: %w", m, err)
	}
	if err := os.MkdirAll(m.Mountpoint, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", m, err)
	}
	if err := unix.Mount(m.Device, m.Mountpoint, m.FSType, flags, data); err != nil {
		return fmt.Errorf("mount %s: %w", m, err)
	}
	return nil
}

func unmount(m Mount) error {
	if err := unix.Unmount(m.Mountpoint, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", m.Mountpoint, err)
	}
	return nil
}
