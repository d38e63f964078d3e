package evtchn

import (
	"encoding/binary"
	"errors"
	"os"
	"regexp"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// socketDevice returns a Device on one end of a non-blocking socket pair
// and the other end as the "kernel": ports written there are what Wait
// reads, and Unmask's writes arrive there. Sockets, like the evtchn device,
// read and write whole u32 port numbers and support poll.
func socketDevice(t *testing.T) (*Device, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	d, err := newDevice(fds[0], "socketpair")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Close()
		unix.Close(fds[1])
	})
	return d, fds[1]
}

func firePorts(t testing.TB, fd int, ports ...Port) {
	b := make([]byte, 4*len(ports))
	for i, p := range ports {
		binary.NativeEndian.PutUint32(b[4*i:], uint32(p))
	}
	if _, err := unix.Write(fd, b); err != nil {
		t.Fatal(err)
	}
}

func TestWaitReturnsEachPortOfOneRead(t *testing.T) {
	d, k := socketDevice(t)
	firePorts(t, k, 3, 7, 9)
	firePorts(t, k, 12)
	for _, want := range []Port{3, 7, 9, 12} {
		got, err := d.Wait()
		if err != nil || got != want {
			t.Fatalf("Wait = %d, %v; want %d", got, err, want)
		}
	}
}

func TestWaitParksInNetpoller(t *testing.T) {
	const waiters = 64
	threads := pprof.Lookup("threadcreate")
	before := threads.Count()
	devs := make([]*Device, waiters)
	kernels := make([]int, waiters)
	done := make(chan Port, waiters)
	for i := range devs {
		devs[i], kernels[i] = socketDevice(t)
		go func(d *Device) {
			p, _ := d.Wait()
			done <- p
		}(devs[i])
	}
	time.Sleep(100 * time.Millisecond) // all waiters blocked
	if grown := threads.Count() - before; grown >= waiters/2 {
		t.Errorf("%d blocked Waits created %d OS threads; they should park in the netpoller", waiters, grown)
	}
	for i, k := range kernels {
		firePorts(t, k, Port(i+1))
	}
	sum := 0
	for range waiters {
		sum += int(<-done)
	}
	if want := waiters * (waiters + 1) / 2; sum != want {
		t.Errorf("ports sum to %d, want %d", sum, want)
	}
}

// A Device polled only elsewhere (Fd and TryWait, as a ring's io_uring
// does) stays out of Go's netpoller, whose epoll would wake an idle
// runtime thread at each event; the first Wait puts it there.
func TestNetpollerOnlyForWait(t *testing.T) {
	d, k := socketDevice(t)
	firePorts(t, k, 4)
	if p, ok, err := d.TryWait(); err != nil || !ok || p != 4 {
		t.Fatalf("TryWait = %d, %v, %v", p, ok, err)
	}
	if inNetpoller(t, d.Fd()) {
		t.Error("TryWait put the descriptor in the netpoller")
	}
	firePorts(t, k, 5)
	if p, err := d.Wait(); err != nil || p != 5 {
		t.Fatalf("Wait = %d, %v", p, err)
	}
	if !inNetpoller(t, d.Fd()) {
		t.Error("Wait did not put the descriptor in the netpoller")
	}
}

// inNetpoller says whether an epoll of this process (the runtime's
// netpoller is its only one) watches fd, by /proc/self/fdinfo.
func inNetpoller(t *testing.T, fd int) bool {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	watched := regexp.MustCompile(`(?m)^tfd:\s+` + strconv.Itoa(fd) + `\s`)
	for _, e := range ents {
		if link, _ := os.Readlink("/proc/self/fd/" + e.Name()); link != "anon_inode:[eventpoll]" {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err == nil && watched.Match(info) {
			return true
		}
	}
	return false
}

func TestCloseUnblocksWait(t *testing.T) {
	d, _ := socketDevice(t)
	errc := make(chan error, 1)
	go func() {
		_, err := d.Wait()
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("Wait after Close = %v, want os.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Wait")
	}
	if _, err := d.Wait(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Wait on a closed device = %v", err)
	}
	if err := d.Notify(1); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Notify on a closed device = %v", err)
	}
	if err := d.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close = %v", err)
	}
}

func TestUnmaskWritesPort(t *testing.T) {
	d, k := socketDevice(t)
	if err := d.Unmask(0x01020304); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 8)
	n, err := unix.Read(k, b)
	if err != nil || n != 4 || binary.NativeEndian.Uint32(b) != 0x01020304 {
		t.Fatalf("kernel side read %d bytes %x, %v", n, b[:n], err)
	}
}

func TestIoctlErrorsReported(t *testing.T) {
	d, _ := socketDevice(t)
	if _, err := d.BindInterdomain(1, 2); !errors.Is(err, unix.ENOTTY) {
		t.Errorf("BindInterdomain on a socket = %v, want ENOTTY", err)
	}
	if err := d.Notify(1); !errors.Is(err, unix.ENOTTY) {
		t.Errorf("Notify on a socket = %v, want ENOTTY", err)
	}
	if len(d.bound) != 0 {
		t.Errorf("failed bind recorded ports %v", d.bound)
	}
}

func TestNotPollableRefused(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "regular")
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(f.Name(), unix.O_RDWR|unix.O_NONBLOCK, 0)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if d, err := newDevice(fd, f.Name()); err == nil {
		d.Close()
		t.Fatal("a regular file (not pollable) was accepted")
	}
}

func TestWaitUnmaskAllocs(t *testing.T) {
	d, k := socketDevice(t)
	msg := make([]byte, 4)
	binary.NativeEndian.PutUint32(msg, 5)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := unix.Write(k, msg); err != nil {
			t.Fatal(err)
		}
		p, err := d.Wait()
		if err != nil || p != 5 {
			t.Fatal(p, err)
		}
		if err := d.Unmask(p); err != nil {
			t.Fatal(err)
		}
		if _, err := unix.Read(k, msg); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Wait+Unmask allocates %v times", allocs)
	}
}

// On Xen: a port allocated unbound for this domain and bound back to it is
// a loopback doorbell. BLKDOM_SELF_DOMID names this domain (default 0).
func TestXenLoopback(t *testing.T) {
	if _, err := os.Stat(DevicePath); err != nil {
		t.Skipf("no Xen here: %v", err)
	}
	var self uint32
	if s := os.Getenv("BLKDOM_SELF_DOMID"); s != "" {
		v, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			t.Fatal(err)
		}
		self = uint32(v)
	}
	a, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	pa, err := a.BindUnboundPort(self)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := b.BindInterdomain(self, pa)
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if err := b.Notify(pb); err != nil {
			t.Fatal(err)
		}
		p, err := a.Wait()
		if err != nil || p != pa {
			t.Fatal(p, err)
		}
		if err := a.Unmask(p); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Notify+Wait+Unmask allocates %v times", allocs)
	}
	if err := b.Unbind(pb); err != nil {
		t.Fatal(err)
	}
}
