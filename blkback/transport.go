package blkback

import (
	"errors"
	"fmt"
	"strconv"
	"syscall"

	"blkdom/blkif"
	"blkdom/evtchn"
	"blkdom/gnttab"
)

// queue is one ring the frontend set up.
type queue struct {
	refs []gnttab.Ref
	port evtchn.Port
}

// transport is what the frontend published for its rings.
type transport struct {
	abi        blkif.ABI
	queues     []queue
	persistent bool // the frontend wants persistent grants
}

// readTransport reads and checks the frontend's ring keys (see
// parseTransport) from xenstore.
func (d *device) readTransport() (transport, error) {
	return parseTransport(d.b.xs.Read, d.fePath, d.b.opts.MaxQueues, d.b.opts.MaxRingPageOrder)
}

// parseTransport reads and checks a frontend's ring keys through read
// (which returns ENOENT for an absent key): one ring at the top level, or
// multi-queue-num-queues rings under queue-N/, each of one page (ring-ref)
// or 2^ring-page-order pages (ring-ref0...). They are guest-written: every
// value is parsed strictly and bounded by what the backend offered
// (maxQueues, maxOrder).
func parseTransport(read func(string) (string, error), fePath string, maxQueues, maxOrder int) (transport, error) {
	var t transport
	k := keys{read}
	protocol, err := k.optional(fePath + "/protocol")
	if err != nil {
		return t, err
	}
	if t.abi, err = blkif.ABIFor(protocol); err != nil {
		return t, fmt.Errorf("unsupported protocol %s", bounded(protocol))
	}
	nq, err := k.optionalUint(fePath+"/multi-queue-num-queues", 1)
	if err != nil {
		return t, err
	}
	if nq < 1 || nq > uint64(maxQueues) {
		return t, fmt.Errorf("frontend asks for %d queues, %d offered", nq, maxQueues)
	}
	// Without ring-page-order the ring is one page named by ring-ref.
	orderKey, err := k.optional(fePath + "/ring-page-order")
	if err != nil {
		return t, err
	}
	var order uint64
	if orderKey != "" {
		if order, err = parseKey(fePath+"/ring-page-order", orderKey, 32); err != nil {
			return t, err
		}
	}
	if order > uint64(maxOrder) {
		return t, fmt.Errorf("frontend asks for ring-page-order %d, %d offered", order, maxOrder)
	}
	for q := range nq {
		dir := fePath
		if nq > 1 {
			dir = fmt.Sprintf("%s/queue-%d", fePath, q)
		}
		var qu queue
		port, err := k.uint(dir+"/event-channel", 32)
		if err != nil {
			return t, err
		}
		qu.port = evtchn.Port(port)
		if orderKey == "" {
			ref, err := k.uint(dir+"/ring-ref", 32)
			if err != nil {
				return t, err
			}
			qu.refs = []gnttab.Ref{gnttab.Ref(ref)}
		} else {
			for i := range 1 << order {
				ref, err := k.uint(fmt.Sprintf("%s/ring-ref%d", dir, i), 32)
				if err != nil {
					return t, err
				}
				qu.refs = append(qu.refs, gnttab.Ref(ref))
			}
		}
		t.queues = append(t.queues, qu)
	}
	persistent, err := k.optionalUint(fePath+"/feature-persistent", 0)
	if err != nil {
		return t, err
	}
	t.persistent = persistent == 1
	return t, nil
}

// keys reads guest-written xenstore keys strictly.
type keys struct{ read func(string) (string, error) }

// optional reads a key that may be absent ("" then).
func (k keys) optional(path string) (string, error) {
	v, err := k.read(path)
	if errors.Is(err, syscall.ENOENT) {
		return "", nil
	}
	return v, err
}

// optionalUint reads a decimal key that may be absent (def then).
func (k keys) optionalUint(path string, def uint64) (uint64, error) {
	v, err := k.optional(path)
	if err != nil || v == "" {
		return def, err
	}
	return parseKey(path, v, 32)
}

// uint reads a decimal key of at most bits bits.
func (k keys) uint(path string, bits int) (uint64, error) {
	v, err := k.read(path)
	if err != nil {
		return 0, err
	}
	return parseKey(path, v, bits)
}

// parseKey parses a guest-written decimal of at most bits bits; an error
// names the key and the value, bounded.
func parseKey(path, v string, bits int) (uint64, error) {
	n, err := strconv.ParseUint(v, 10, bits)
	if err != nil {
		return 0, fmt.Errorf("%s = %s: not a %d-bit number", path, bounded(v), bits)
	}
	return n, nil
}
