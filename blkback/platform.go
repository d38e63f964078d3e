package blkback

import (
	"blkdom/evtchn"
	"blkdom/gnttab"
)

// Grants maps a frontend's granted pages into this process. One Grants is
// used by one ring at a time, so implementations may keep per-handle scratch
// buffers. gnttab.Device implements it on Xen; xensim.Grants in simulation.
type Grants interface {
	// Map maps refs, all granted by domain dom, into one contiguous range,
	// writable only when writable is true (a disk write only reads guest
	// memory, so its pages are mapped read-only).
	Map(dom uint32, refs []gnttab.Ref, writable bool) (gnttab.Mapping, error)
	// Unmap releases a mapping returned by Map.
	Unmap(m gnttab.Mapping) error
	// Copy copies between granted pages and local buffers (the hypervisor
	// does the copy; nothing is mapped), setting each segment's status.
	Copy(segs []gnttab.CopySegment) error
	Close() error
}

// Events is one handle on the event-channel device, used by one ring.
// evtchn.Device implements it on Xen; xensim.Events in simulation.
type Events interface {
	// BindInterdomain binds a local port to the remote domain's port.
	BindInterdomain(dom uint32, remote evtchn.Port) (evtchn.Port, error)
	// Notify signals the remote end of a bound local port.
	Notify(local evtchn.Port) error
	// Wait blocks until a bound port fires and returns it. The port stays
	// masked until Unmask. After Close, Wait returns an error.
	Wait() (evtchn.Port, error)
	Unmask(local evtchn.Port) error
	// Close unbinds every port of the handle and ends a Wait: a ring's
	// handle goes with its ring, so ports are never unbound one by one.
	Close() error
}

// PollEvents is an Events whose fired ports show on a descriptor, as both
// evtchn.Device and xensim.Events do. A ring's loop on the io_uring engine
// then polls that descriptor in the same system call that waits for its
// I/O, and takes the events itself: no goroutine and no netpoller stand
// between the frontend's notification and the loop.
type PollEvents interface {
	Events
	// Fd is readable while a fired port waits to be taken.
	Fd() int
	// TryWait is Wait without blocking: ok is false when no port fired.
	TryWait() (p evtchn.Port, ok bool, err error)
}

// Platform opens the per-ring grant and event-channel handles: the real
// Linux devices, or a simulated Xen.
type Platform interface {
	OpenGrants() (Grants, error)
	OpenEvents() (Events, error)
}

// NewPlatform makes a Platform of two constructors of concrete handle
// types, such as gnttab.Open and evtchn.Open, or a simulated domain's
// OpenGrants and OpenEvents.
func NewPlatform[G Grants, E Events](grants func() (G, error), events func() (E, error)) Platform {
	return funcPlatform{
		grants: func() (Grants, error) {
			g, err := grants()
			if err != nil {
				return nil, err
			}
			return g, nil
		},
		events: func() (Events, error) {
			e, err := events()
			if err != nil {
				return nil, err
			}
			return e, nil
		},
	}
}

type funcPlatform struct {
	grants func() (Grants, error)
	events func() (Events, error)
}

func (p funcPlatform) OpenGrants() (Grants, error) { return p.grants() }
func (p funcPlatform) OpenEvents() (Events, error) { return p.events() }

// Probes is the optional eBPF instrumentation (package ebpf). Told when
// each request completes, it counts network buffers that still reference
// the request's granted pages afterwards: an O_DIRECT write's pages still
// in the network stack after it completed, made visible.
type Probes interface {
	// Begin says a new request uses grants that stay mapped (persistent
	// grants), so its own network buffers are not late.
	Begin(dom uint16, refs []gnttab.Ref) error
	// Complete marks the grants of a request as completed. Both are called
	// from the data path and must not allocate.
	Complete(dom uint16, disk uint32, refs []gnttab.Ref) error
	// LateRefs is how many late references the disk has had.
	LateRefs(disk uint32) (uint64, error)
}
