package xensim

import (
	"fmt"
	"os"

	"blkdom/evtchn"

	"golang.org/x/sys/unix"
)

// Events is one domain's handle on simulated event channels: the
// simulated /dev/xen/evtchn, with evtchn.Device's methods and semantics.
//
// Notify sets the peer port pending. A pending port that is not masked is
// masked and delivered to the Wait of the handle that bound it, at most
// once however often it is notified; it stays masked until Unmask, and
// Unmask of a port notified meanwhile delivers it again. As in Xen, a
// freshly bound interdomain port fires once, because notifications sent
// to the unbound peer may have been lost.
//
// Notify, Wait and Unmask allocate nothing: each handle queues its
// delivered ports in a ring with room for every port it has bound.
type Events struct {
	x      *Xen
	dom    *Domain
	closed bool
	nbound int
	queue  []evtchn.Port // ring of delivered ports, len(queue) >= nbound
	head   int
	n      int
	wake   chan struct{} // capacity 1: something was queued
	done   chan struct{} // closed by Close
	// efd is an eventfd readable while the queue holds a port, as
	// /dev/xen/evtchn is readable while it has fired ports: Fd and TryWait
	// let a ring's loop poll for events itself, as it does on Xen.
	efd int
}

type portState uint8

const (
	portFree portState = iota
	portUnbound
	portInterdomain
)

// port is one event channel end in a domain.
type port struct {
	state      portState
	owner      *Events
	remoteDom  uint32      // unbound: who may bind; interdomain: the peer
	remotePort evtchn.Port // interdomain only
	pending    bool        // notified while masked
	masked     bool        // delivered and not yet unmasked
	queued     bool        // in owner.queue
}

// OpenEvents opens an event-channel handle for domain d.
func (d *Domain) OpenEvents() (*Events, error) {
	d.x.mu.Lock()
	defer d.x.mu.Unlock()
	if d.x.closed {
		return nil, fmt.Errorf("xensim: open events: %w", os.ErrClosed)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("xensim: open events: eventfd: %w", err)
	}
	h := &Events{x: d.x, dom: d, wake: make(chan struct{}, 1), done: make(chan struct{}), efd: efd}
	d.eventHandles = append(d.eventHandles, h)
	return h, nil
}

// BindUnboundPort allocates a port of this domain that domain remote may
// bind to with BindInterdomain.
func (h *Events) BindUnboundPort(remote uint32) (evtchn.Port, error) {
	h.x.mu.Lock()
	defer h.x.mu.Unlock()
	if h.closed {
		return 0, fmt.Errorf("xensim: bind: %w", os.ErrClosed)
	}
	p := h.allocLocked()
	h.dom.ports[p] = port{state: portUnbound, owner: h, remoteDom: remote}
	return p, nil
}

// BindInterdomain binds a new local port to port remote of domain dom,
// which dom must have allocated unbound for this domain; otherwise EINVAL.
func (h *Events) BindInterdomain(dom uint32, remote evtchn.Port) (evtchn.Port, error) {
	h.x.mu.Lock()
	defer h.x.mu.Unlock()
	if h.closed {
		return 0, fmt.Errorf("xensim: bind: %w", os.ErrClosed)
	}
	rd := h.x.domains[dom]
	if rd == nil || uint64(remote) >= uint64(len(rd.ports)) ||
		rd.ports[remote].state != portUnbound || rd.ports[remote].remoteDom != h.dom.id {
		return 0, fmt.Errorf("xensim: bind to domain %d port %d: not unbound for domain %d: %w",
			dom, remote, h.dom.id, unix.EINVAL)
	}
	p := h.allocLocked() // may grow rd.ports when dom is this domain
	h.dom.ports[p] = port{state: portInterdomain, owner: h, remoteDom: dom, remotePort: remote}
	rp := &rd.ports[remote]
	rp.state, rp.remotePort = portInterdomain, p
	h.x.deliverLocked(h.dom, p)
	return p, nil
}

// allocLocked reserves a free port number of this domain for h and makes
// room for it in h's queue.
func (h *Events) allocLocked() evtchn.Port {
	d := h.dom
	if len(d.ports) == 0 {
		d.ports = make([]port, 1) // port 0 is never valid
	}
	p := evtchn.Port(len(d.ports))
	for i := 1; i < len(d.ports); i++ {
		if d.ports[i].state == portFree {
			p = evtchn.Port(i)
			break
		}
	}
	if int(p) == len(d.ports) {
		d.ports = append(d.ports, port{})
	}
	h.nbound++
	if h.nbound > len(h.queue) {
		q := make([]evtchn.Port, max(4, 2*len(h.queue)))
		for i := range h.n {
			q[i] = h.queue[(h.head+i)%len(h.queue)]
		}
		h.queue, h.head = q, 0
	}
	return p
}

// owned returns local's state if h bound it, else nil.
func (h *Events) owned(local evtchn.Port) *port {
	if uint64(local) >= uint64(len(h.dom.ports)) || h.dom.ports[local].owner != h {
		return nil
	}
	return &h.dom.ports[local]
}

func (h *Events) notOwned(op string, local evtchn.Port) error {
	if h.closed {
		return fmt.Errorf("xensim: %s port %d: %w", op, local, os.ErrClosed)
	}
	return fmt.Errorf("xensim: %s port %d: not bound by this handle: %w", op, local, unix.EINVAL)
}

// Unbind closes a port bound by this handle. Its interdomain peer becomes
// unbound again (it may be bound anew), and a delivery not yet returned by
// Wait is dropped.
func (h *Events) Unbind(local evtchn.Port) error {
	h.x.mu.Lock()
	defer h.x.mu.Unlock()
	if h.owned(local) == nil {
		return h.notOwned("unbind", local)
	}
	h.unbindLocked(local)
	return nil
}

func (h *Events) unbindLocked(local evtchn.Port) {
	p := &h.dom.ports[local]
	if p.state == portInterdomain {
		peer := &h.x.domains[p.remoteDom].ports[p.remotePort]
		peer.state, peer.remotePort = portUnbound, 0
	}
	if p.queued {
		k := 0
		for i := range h.n {
			if q := h.queue[(h.head+i)%len(h.queue)]; q != local {
				h.queue[(h.head+k)%len(h.queue)] = q
				k++
			}
		}
		h.n = k
	}
	*p = port{}
	h.nbound--
}

// Notify signals the peer of local. Notifying a port whose peer has not
// bound yet (or has gone) does nothing, as in Xen.
func (h *Events) Notify(local evtchn.Port) error {
	h.x.mu.Lock()
	defer h.x.mu.Unlock()
	p := h.owned(local)
	if p == nil {
		return h.notOwned("notify", local)
	}
	if p.state == portInterdomain {
		h.x.deliverLocked(h.x.domains[p.remoteDom], p.remotePort)
	}
	return nil
}

// deliverLocked raises port pn of domain d: masks it and queues it for its
// owner, or, if it is already masked, leaves it pending.
func (x *Xen) deliverLocked(d *Domain, pn evtchn.Port) {
	p := &d.ports[pn]
	if p.masked {
		p.pending = true
		return
	}
	p.masked = true
	if p.queued {
		return
	}
	h := p.owner
	p.queued = true
	h.queue[(h.head+h.n)%len(h.queue)] = pn
	h.n++
	h.signal()
}

func (h *Events) signal() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
	unix.Write(h.efd, one[:]) // cannot fail: the counter is reset whenever the queue empties
}

// one is an eventfd increment of 1.
var one = [8]byte{1}

// Wait blocks until a port bound by this handle fires and returns it; the
// port stays masked until Unmask. After Close it returns an error wrapping
// os.ErrClosed.
func (h *Events) Wait() (evtchn.Port, error) {
	for {
		pn, ok, err := h.TryWait()
		if ok || err != nil {
			return pn, err
		}
		select {
		case <-h.wake:
		case <-h.done:
		}
	}
}

// TryWait is Wait without blocking: ok is false when no port has fired.
func (h *Events) TryWait() (pn evtchn.Port, ok bool, err error) {
	h.x.mu.Lock()
	defer h.x.mu.Unlock()
	if h.closed {
		return 0, false, fmt.Errorf("xensim: wait: %w", os.ErrClosed)
	}
	if h.n == 0 {
		h.unready()
		return 0, false, nil
	}
	pn = h.queue[h.head]
	h.head = (h.head + 1) % len(h.queue)
	h.n--
	h.dom.ports[pn].queued = false
	if h.n > 0 {
		h.signal() // for another waiter
	} else {
		h.unready() // as the device: not readable once every port is taken
	}
	return pn, true, nil
}

// unready resets the eventfd: the queue is empty.
func (h *Events) unready() {
	var b [8]byte
	unix.Read(h.efd, b[:])
}

// Fd is readable while a fired port waits to be taken, like the evtchn
// device's descriptor; it is only for polling.
func (h *Events) Fd() int { return h.efd }

// Unmask re-enables a fired port; if it was notified while masked, it is
// delivered again at once.
func (h *Events) Unmask(local evtchn.Port) error {
	h.x.mu.Lock()
	defer h.x.mu.Unlock()
	p := h.owned(local)
	if p == nil {
		return h.notOwned("unmask", local)
	}
	p.masked = false
	if p.pending {
		p.pending = false
		h.x.deliverLocked(h.dom, local)
	}
	return nil
}

// Close unbinds every port of the handle and wakes its Waits.
func (h *Events) Close() error {
	h.x.mu.Lock()
	defer h.x.mu.Unlock()
	if h.closed {
		return fmt.Errorf("xensim: close events: %w", os.ErrClosed)
	}
	h.closeLocked()
	return nil
}

func (h *Events) closeLocked() {
	for i := range h.dom.ports {
		if h.dom.ports[i].owner == h {
			h.unbindLocked(evtchn.Port(i))
		}
	}
	h.closed = true
	close(h.done)
	unix.Close(h.efd)
	h.dom.eventHandles = removeHandle(h.dom.eventHandles, h)
}
