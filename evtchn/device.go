package evtchn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DevicePath is Linux's event-channel device.
const DevicePath = "/dev/xen/evtchn"

// evtchn ioctl numbers (include/uapi/xen/evtchn.h): _IOC(_IOC_NONE, 'E',
// nr, sizeof(argument)). layout_unsafe_test.go (TestIoctlNumbers) recomputes them.
const (
	ioctlBindInterdomain = 0x00084501
	ioctlBindUnboundPort = 0x00044502
	ioctlUnbind          = 0x00044503
	ioctlNotify          = 0x00044504
	ioctlReset           = 0x00004505
)

// readPorts is how many fired ports one read collects.
const readPorts = 16

// Device is an open /dev/xen/evtchn. Its descriptor is non-blocking. The
// first Wait registers it with Go's netpoller, so that a goroutine
// blocked in Wait parks without holding an OS thread, and Close wakes it.
// A descriptor that is only polled elsewhere (Fd, TryWait: a ring's
// io_uring poll in blkback) stays out of the netpoller: its epoll would
// wake an idle runtime thread at every event, for nothing.
type Device struct {
	name string

	// mu guards fd against Close (ioctls use the raw descriptor; f.Fd
	// would switch the file to blocking mode), f, arg and bound.
	mu     sync.Mutex
	fd     int
	f      *os.File // the descriptor in the netpoller, made by the first Wait
	closed bool
	arg    [2]uint32 // ioctl argument
	bound  []Port    // ports bound through this handle, for overflow recovery

	// waitMu serialises Wait, which owns rbuf and ready.
	waitMu    sync.Mutex
	rbuf      [4 * readPorts]byte
	ready     []Port // fired ports not yet returned by Wait
	readyBuf  [readPorts]Port
	unmaskMu  sync.Mutex
	unmaskBuf [4]byte
}

// Open opens the event-channel device.
func Open() (*Device, error) {
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: DevicePath, Err: err}
	}
	return newDevice(fd, DevicePath)
}

// newDevice wraps a non-blocking descriptor, which must support poll: an
// epoll accepts it only then.
func newDevice(fd int, name string) (*Device, error) {
	if err := checkPollable(fd); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("evtchn: %s is not pollable: %w", name, err)
	}
	return &Device{name: name, fd: fd}, nil
}

// checkPollable adds fd to a scratch epoll, which refuses (EPERM) a
// descriptor without poll.
func checkPollable(fd int) error {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(ep)
	return unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN})
}

// file returns the descriptor as a file in the netpoller, for a blocking
// read, registering it on the first call. os.NewFile registers a
// non-blocking descriptor that supports poll; deadlines work only then,
// which is how the registration is checked.
func (d *Device) file() (*os.File, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, os.ErrClosed
	}
	if d.f == nil {
		// The file owns the descriptor from now on (Close closes it
		// through the file), even if it is not in the netpoller.
		d.f = os.NewFile(uintptr(d.fd), d.name)
		if err := d.f.SetReadDeadline(time.Time{}); err != nil {
			return nil, fmt.Errorf("%s is not in the netpoller: %w", d.name, err)
		}
	}
	return d.f, nil
}

// BindInterdomain binds a new local port to port remote of domain dom,
// which dom must have allocated as unbound for this domain.
func (d *Device) BindInterdomain(dom uint32, remote Port) (Port, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, err := d.ioctl(ioctlBindInterdomain, dom, uint32(remote))
	if err != nil {
		return 0, fmt.Errorf("evtchn: bind to domain %d port %d: %w", dom, remote, err)
	}
	d.bound = append(d.bound, Port(p))
	return Port(p), nil
}

// BindUnboundPort allocates a local port that domain remote may bind to.
func (d *Device) BindUnboundPort(remote uint32) (Port, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, err := d.ioctl(ioctlBindUnboundPort, remote, 0)
	if err != nil {
		return 0, fmt.Errorf("evtchn: allocate port for domain %d: %w", remote, err)
	}
	d.bound = append(d.bound, Port(p))
	return Port(p), nil
}

// Unbind closes a local port bound through this handle. A Wait may still
// return it if it fired before; callers ignore ports they no longer own.
func (d *Device) Unbind(local Port) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := d.ioctl(ioctlUnbind, uint32(local), 0); err != nil {
		return fmt.Errorf("evtchn: unbind port %d: %w", local, err)
	}
	if i := slices.Index(d.bound, local); i >= 0 {
		d.bound = slices.Delete(d.bound, i, i+1)
	}
	return nil
}

// Notify signals the remote end of local.
func (d *Device) Notify(local Port) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := d.ioctl(ioctlNotify, uint32(local), 0); err != nil {
		return fmt.Errorf("evtchn: notify port %d: %w", local, err)
	}
	return nil
}

// Wait blocks until a port fires and returns it; the port stays masked
// until Unmask. One read may return several ports; they are handed out one
// per call. If the kernel's event ring overflowed, Wait resets it and
// reports every bound port as fired: a spurious event is harmless, a lost
// one would stall a ring. After Close, Wait returns an error wrapping
// os.ErrClosed.
func (d *Device) Wait() (Port, error) {
	p, _, err := d.next(true)
	return p, err
}

// TryWait is Wait without blocking: ok is false when no port has fired.
// With Fd, it lets a caller wait for events in its own poll (an io_uring
// poll in blkback), with no goroutine in between.
func (d *Device) TryWait() (p Port, ok bool, err error) { return d.next(false) }

// Fd is the device's descriptor, readable while a fired port waits to be
// taken by Wait or TryWait. It is only for polling.
func (d *Device) Fd() int { return d.fd }

// next returns the next fired port, reading the device when none is left
// over from the last read; with block false it returns ok false instead
// of waiting.
func (d *Device) next(block bool) (Port, bool, error) {
	d.waitMu.Lock()
	defer d.waitMu.Unlock()
	for len(d.ready) == 0 {
		var n int
		var err error
		if block {
			var f *os.File
			if f, err = d.file(); err == nil {
				n, err = f.Read(d.rbuf[:])
			}
		} else {
			n, err = d.readNow()
			if err == unix.EAGAIN {
				return 0, false, nil
			}
		}
		switch {
		case errors.Is(err, unix.EFBIG):
			if err := d.reset(); err != nil {
				return 0, false, err
			}
		case err != nil:
			return 0, false, fmt.Errorf("evtchn: wait: %w", err)
		default:
			d.ready = d.readyBuf[:0]
			for i := 0; i+4 <= n; i += 4 {
				d.ready = append(d.ready, Port(binary.NativeEndian.Uint32(d.rbuf[i:])))
			}
		}
	}
	p := d.ready[0]
	d.ready = d.ready[1:]
	return p, true, nil
}

// readNow reads fired ports from the raw descriptor, which fails with
// EAGAIN instead of parking on the netpoller as f.Read would. It holds mu so
// that Close cannot free the descriptor meanwhile.
func (d *Device) readNow() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.rawIO(unix.SYS_READ, d.rbuf[:])
}

// reset clears the kernel's overflowed event ring and queues every bound
// port. Called by Wait, with waitMu held.
func (d *Device) reset() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := d.ioctl(ioctlReset, 0, 0); err != nil {
		return fmt.Errorf("evtchn: reset after overflow: %w", err)
	}
	d.ready = append(d.readyBuf[:0], d.bound...)
	return nil
}

// Unmask re-enables a fired port; if it was signalled while masked, it
// fires again.
func (d *Device) Unmask(local Port) error {
	d.unmaskMu.Lock()
	defer d.unmaskMu.Unlock()
	binary.NativeEndian.PutUint32(d.unmaskBuf[:], uint32(local))
	d.mu.Lock()
	_, err := d.rawIO(unix.SYS_WRITE, d.unmaskBuf[:])
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("evtchn: unmask port %d: %w", local, err)
	}
	return nil
}

// Close closes the device, which unbinds its ports and wakes a Wait in
// progress.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("evtchn: close: %w", os.ErrClosed)
	}
	d.closed = true
	if d.f != nil {
		return d.f.Close() // wakes a Wait parked in the netpoller
	}
	return unix.Close(d.fd)
}
