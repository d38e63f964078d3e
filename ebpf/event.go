package ebpf

import (
	"encoding/binary"
	"fmt"
	"time"

	"blkdom/gnttab"
)

// Hook names the place in the network stack where a late reference was seen.
// Retransmit and Xmit mean the page's current contents went, or are about to
// go, on the wire; Drop and Consume mean a buffer held the page until then.
type Hook uint8

const (
	HookRetransmit Hook = iota // tcp:tcp_retransmit_skb, TCP resends a segment
	HookXmit                   // net:net_dev_start_xmit, a driver is handed a packet
	HookDrop                   // skb:kfree_skb, a buffer is dropped
	HookConsume                // skb:consume_skb, a buffer is freed after use
	numHooks
)

var hookNames = [numHooks]string{"retransmit", "xmit", "drop", "consume"}

func (h Hook) String() string {
	if h >= numHooks {
		return fmt.Sprintf("Hook(%d)", uint8(h))
	}
	return hookNames[h]
}

// Counts are the late references seen at each hook, and the events lost
// because the ring buffer was full.
type Counts struct {
	Retransmit, Xmit, Drop, Consume uint64
	Lost                            uint64
	// InFlight, indexed by Hook, counts references to granted pages whose
	// request had not completed yet: the network stack sending a request's
	// data from the guest's pages themselves, by reference. A kernel that
	// copies the data instead counts none at any hook, and then no late
	// reference is possible either. Only Global counts them: a page in
	// flight is known by its grant, not yet by the disk that completes it.
	InFlight [numHooks]uint64
}

// Total is the number of late references at all hooks.
func (c Counts) Total() uint64 { return c.Retransmit + c.Xmit + c.Drop + c.Consume }

func countsFrom(v *probesCounts) Counts {
	return Counts{
		Retransmit: v.Hits[HookRetransmit],
		Xmit:       v.Hits[HookXmit],
		Drop:       v.Hits[HookDrop],
		Consume:    v.Hits[HookConsume],
		Lost:       v.Lost,
		InFlight:   v.Inflight,
	}
}

// Event is one late reference: a network buffer referred to Page, which held
// grant Gref of domain Dom, Since after blkdom completed the request that
// used the grant on Disk.
type Event struct {
	Page     uint64 // kernel address of the struct page
	Since    time.Duration
	Gref     gnttab.Ref
	Disk     uint32
	Dom      uint16
	Hook     Hook
	Unmapped bool // the grant was already unmapped
}

// eventSize and the offsets in decode are those of struct event in probes.c
// (TestEventLayout checks them against the object's BTF).
const eventSize = 32

// decode fills e from a ring-buffer record.
func (e *Event) decode(b []byte) error {
	if len(b) < eventSize {
		return fmt.Errorf("ebpf: short event record: %d bytes", len(b))
	}
	ne := binary.NativeEndian
	e.Page = ne.Uint64(b[0:])
	e.Since = time.Duration(ne.Uint64(b[8:]))
	e.Gref = gnttab.Ref(ne.Uint32(b[16:]))
	e.Disk = ne.Uint32(b[20:])
	e.Dom = ne.Uint16(b[24:])
	e.Hook = Hook(b[26])
	e.Unmapped = b[27] != 0
	return nil
}
