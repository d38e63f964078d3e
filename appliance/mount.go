package appliance

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
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

// lateMounts come after the serving modules: the eBPF probes want bpffs
// and tracefs. Each may be absent (no BPF).
var lateMounts = []fsMount{
	{"bpf", "bpffs", "/sys/fs/bpf", nosuidNodevNoexec, "mode=0700"},
	{"tracefs", "tracefs", "/sys/kernel/tracing", nosuidNodevNoexec, ""},
}

// xenfsMount comes once its module is loaded, in the background: serving
// does not need it (tools that look for /proc/xen do).
var xenfsMount = fsMount{"xenfs", "xenfs", "/proc/xen", 0, ""}

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
//
// Local file systems are mounted by apply itself. Network ones (NFS), and
// local ones whose first try failed, are mounted by a goroutine per entry
// that tries until it works (the server answers, the disk appears), so
// that an unreachable server does not hold up the rest of the domain;
// ready tells the backend whether an image's file system is up yet.
type mountSet struct {
	mu      sync.Mutex
	mounted []Mount // in mount order
	// pending are the network mounts being tried in the background, by
	// mountpoint.
	pending map[string]*pendingMount
	closed  bool
	// deviceWait is how long a mount waits for its device node to
	// appear: disks show up while their drivers probe.
	deviceWait time.Duration
	// retry is the first pause between two tries of a mount (default
	// 1 s); it doubles up to retryMax.
	retry, retryMax time.Duration
	// unmountWait is how long an unmount of a network file system may
	// block (a server gone away) before it is detached lazily instead.
	unmountWait time.Duration
	// publish, if set, records a mount's state ("mounting", "mounted",
	// "error" and retrying, "unmounted") and its last error.
	publish func(rel, state string, err error)
	// log, if set, says what the background mounts do.
	log func(msg string, args ...any)
}

// pendingMount is a mount not up yet: being tried in the background, or
// held (see hold).
type pendingMount struct {
	m       Mount
	stop    chan struct{} // closed when it leaves the configuration
	waiters []func()      // called once it is mounted or given up
	held    bool          // not tried yet: waiting for the first apply
}

// hold makes ready answer false for the images on want's file systems
// until the first apply has mounted them (or left them to the background
// tries): PID 1 serves before it mounts, as soon as it has read its
// configuration, and a disk on a mount that is not up yet stays in
// InitWait meanwhile.
func (s *mountSet) hold(want []Mount) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending == nil {
		s.pending = map[string]*pendingMount{}
	}
	for _, m := range want {
		if s.pending[m.Mountpoint] == nil {
			s.pending[m.Mountpoint] = &pendingMount{m: m, stop: make(chan struct{}), held: true}
		}
	}
}

// adopt takes the file systems of want that are mounted on their
// mountpoints already (by the PID 1 this one succeeds) as its own, so that
// apply leaves them and close unmounts them, and returns the others.
func (s *mountSet) adopt(want []Mount) (rest []Mount) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range want {
		if !isMountpoint(m.Mountpoint) || slices.ContainsFunc(s.mounted, func(o Mount) bool { return o.Mountpoint == m.Mountpoint }) {
			rest = append(rest, m)
			continue
		}
		s.mounted = append(s.mounted, m)
	}
	return rest
}

// apply makes the mounted set equal to want, as far as it can: a file
// system that cannot be unmounted (an image on it is open) stays, a new
// local one is mounted now or, if that fails (the error is returned),
// tried again in the background, and a new network one is tried in the
// background from the start.
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
			if err := s.unmount(m); err != nil {
				errs = append(errs, err)
				continue
			}
			s.mounted = append(s.mounted[:i], s.mounted[i+1:]...)
		}
	}
	for mp, p := range s.pending {
		if !keep[p.m] {
			s.forget(mp, p)
		}
	}
	have := map[string]bool{}
	for _, m := range s.mounted {
		have[m.Mountpoint] = true
	}
	for _, m := range want {
		var waiters []func() // of a held mount, woken once it is up or left to the background
		if p := s.pending[m.Mountpoint]; p != nil && p.held {
			delete(s.pending, m.Mountpoint)
			waiters = p.waiters
		}
		if have[m.Mountpoint] || s.pending[m.Mountpoint] != nil {
			wake(waiters)
			continue // mounted already, being tried, or an old mount is still busy there
		}
		if m.Network() {
			s.background(m, nil, waiters)
			continue
		}
		err := s.mount(m)
		if err != nil {
			errs = append(errs, err)
			s.background(m, err, waiters)
			continue
		}
		s.status(m, nil)
		have[m.Mountpoint] = true
		s.mounted = append(s.mounted, m)
		wake(waiters)
	}
	return errors.Join(errs...)
}

// status publishes m's state after a try whose outcome is err.
func (s *mountSet) status(m Mount, err error) {
	if s.publish == nil {
		return
	}
	state := "mounted"
	if err != nil {
		state = "error"
	}
	s.publish("mounts/"+strconv.Itoa(m.N), state, err)
}

// background starts the goroutine that mounts m: at once for a network
// file system (failed is nil), after a pause for one whose first try
// failed. waiters are woken once it is mounted. Called with s.mu held.
func (s *mountSet) background(m Mount, failed error, waiters []func()) {
	if s.pending == nil {
		s.pending = map[string]*pendingMount{}
	}
	p := &pendingMount{m: m, stop: make(chan struct{}), waiters: waiters}
	s.pending[m.Mountpoint] = p
	if failed != nil {
		s.status(m, failed)
	} else if s.publish != nil {
		s.publish("mounts/"+strconv.Itoa(m.N), "mounting", nil)
	}
	go s.retryMount(p, failed != nil)
}

func wake(waiters []func()) {
	for _, w := range waiters {
		w()
	}
}

// forget stops trying p and wakes whoever waits for it (the image open
// then fails or finds the directory as it is). Called with s.mu held.
func (s *mountSet) forget(mp string, p *pendingMount) {
	close(p.stop)
	delete(s.pending, mp)
	wake(p.waiters)
}

// retryMount tries p's mount until it succeeds or p is stopped, pausing
// s.retry, then twice as long each time, up to s.retryMax; with wait, it
// pauses before the first try too.
func (s *mountSet) retryMount(p *pendingMount, wait bool) {
	pause := cmp.Or(s.retry, time.Second)
	if wait {
		select {
		case <-p.stop:
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, max(s.retryMax, pause))
	}
	for try := 1; ; try++ {
		err := s.mount(p.m) // may block while the server does not answer
		s.mu.Lock()
		select {
		case <-p.stop:
			s.mu.Unlock()
			if err == nil {
				s.unmount(p.m) // it left the configuration meanwhile
			}
			return
		default:
		}
		s.status(p.m, err)
		if err == nil {
			s.mounted = append(s.mounted, p.m)
			s.forget(p.m.Mountpoint, p)
			s.mu.Unlock()
			if s.log != nil {
				s.log("mounted", "mount", p.m.String(), "tries", try)
			}
			return
		}
		s.mu.Unlock()
		if s.log != nil {
			s.log("mount failed; trying again", "mount", p.m.String(), "err", err, "in", pause)
		}
		select {
		case <-p.stop:
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, max(s.retryMax, pause))
	}
}

// ready says whether the file system that holds path is up: false while
// path lies under a mount that is held or still being tried, in which
// case wake is called once it is mounted (or leaves the configuration).
func (s *mountSet) ready(path string, wake func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for mp, p := range s.pending {
		if path == mp || strings.HasPrefix(path, mp+"/") {
			p.waiters = append(p.waiters, wake)
			return false
		}
	}
	return true
}

// close unmounts everything in reverse order and stops the background
// mounts; later applies do nothing.
func (s *mountSet) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for mp, p := range s.pending {
		s.forget(mp, p)
	}
	var errs []error
	for i := len(s.mounted) - 1; i >= 0; i-- {
		m := s.mounted[i]
		err := s.unmount(m)
		if err == nil && s.publish != nil {
			s.publish("mounts/"+strconv.Itoa(m.N), "unmounted", nil)
		}
		errs = append(errs, err)
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
	if !m.Network() {
		for deadline := time.Now().Add(s.deviceWait); ; time.Sleep(100 * time.Millisecond) {
			if _, err = os.Stat(m.Device); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("mount %s: %w", m, err)
		}
	}
	if err := os.MkdirAll(m.Mountpoint, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", m, err)
	}
	if err := unix.Mount(m.Device, m.Mountpoint, m.FSType, flags, m.fsData(data)); err != nil {
		return fmt.Errorf("mount %s: %w", m, err)
	}
	return nil
}

// unmount unmounts m. A network file system whose server has gone can
// block the unmount: after unmountWait it is detached lazily instead
// (MNT_DETACH), which returns at once; every image on it is closed by
// then, and the kernel drops it when it can.
func (s *mountSet) unmount(m Mount) error {
	if !m.Network() || s.unmountWait <= 0 {
		return unmount(m.Mountpoint, 0)
	}
	done := make(chan error, 1)
	go func() { done <- unmount(m.Mountpoint, 0) }()
	select {
	case err := <-done:
		return err
	case <-time.After(s.unmountWait):
		if err := unmount(m.Mountpoint, unix.MNT_DETACH); err != nil {
			return err
		}
		return fmt.Errorf("unmount %s: blocked for %v, detached lazily", m.Mountpoint, s.unmountWait)
	}
}

func unmount(dir string, flags int) error {
	if err := unix.Unmount(dir, flags); err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}
