// Package rtnl configures network interfaces through rtnetlink, the
// kernel's routing socket: link up and MTU (RTM_NEWLINK), a static address
// (RTM_NEWADDR) and a default route (RTM_NEWROUTE). It is what a storage
// driver domain needs to reach network storage, and no more: no DHCP, no
// reading of tables, no events.
//
// The few messages it sends are encoded here; the socket itself is in
// socket.go.
package rtnl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Interface is how one network interface is to be configured.
type Interface struct {
	Name string
	// Addr is the interface's address and prefix, e.g. 169.254.1.2/16;
	// invalid (the zero value) for none.
	Addr netip.Prefix
	// Gateway, if valid, is the next hop of a default route through the
	// interface, of Addr's family.
	Gateway netip.Addr
	// MTU, if not 0, is set on the link.
	MTU int
}

// String is i as a log shows it: "eth0 169.254.1.2/16 via 169.254.1.1 mtu 1400".
func (i Interface) String() string {
	s := i.Name
	if i.Addr.IsValid() {
		s += " " + i.Addr.String()
	}
	if i.Gateway.IsValid() {
		s += " via " + i.Gateway.String()
	}
	if i.MTU != 0 {
		s += fmt.Sprintf(" mtu %d", i.MTU)
	}
	return s
}

// Check reports what is wrong with i before anything is sent.
func (i Interface) Check() error {
	switch {
	case i.Name == "" || len(i.Name) >= unix.IFNAMSIZ:
		return fmt.Errorf("interface name %q: 1 to %d bytes", i.Name, unix.IFNAMSIZ-1)
	case i.MTU < 0 || i.MTU > 65535:
		return fmt.Errorf("%s: mtu %d out of range", i.Name, i.MTU)
	case i.Gateway.IsValid() && !i.Addr.IsValid():
		return fmt.Errorf("%s: a gateway needs an address", i.Name)
	case i.Gateway.IsValid() && i.Gateway.Is4() != i.Addr.Addr().Is4():
		return fmt.Errorf("%s: gateway %s and address %s are of different families", i.Name, i.Gateway, i.Addr)
	}
	return nil
}

// Configure applies i to the interface whose index is index: MTU and up
// first, then the address, then the default route. Every step replaces
// what is there, so Configure can run again with the same or a changed i.
// Addresses and routes it set earlier and i no longer names stay.
func (c *Conn) Configure(index int, i Interface) error {
	if err := i.Check(); err != nil {
		return err
	}
	if err := c.request(unix.RTM_NEWLINK, 0, linkUp(index, i.MTU)); err != nil {
		return fmt.Errorf("%s: link up: %w", i.Name, err)
	}
	if i.Addr.IsValid() {
		if err := c.request(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, address(index, i.Addr)); err != nil {
			return fmt.Errorf("%s: address %s: %w", i.Name, i.Addr, err)
		}
	}
	if i.Gateway.IsValid() {
		if err := c.request(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, defaultRoute(index, i.Gateway)); err != nil {
			return fmt.Errorf("%s: default route via %s: %w", i.Name, i.Gateway, err)
		}
	}
	return nil
}

// ne is the byte order of netlink messages: the host's.
var ne = binary.NativeEndian

// linkUp is an ifinfomsg that sets IFF_UP, with IFLA_MTU if mtu is set.
func linkUp(index, mtu int) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = unix.AF_UNSPEC
	ne.PutUint32(b[4:], uint32(index))
	ne.PutUint32(b[8:], unix.IFF_UP)  // flags
	ne.PutUint32(b[12:], unix.IFF_UP) // change: only this flag
	if mtu > 0 {
		b = attr(b, unix.IFLA_MTU, u32(uint32(mtu)))
	}
	return b
}

// address is an ifaddrmsg for prefix p on interface index.
func address(index int, p netip.Prefix) []byte {
	b := make([]byte, unix.SizeofIfAddrmsg)
	b[0] = family(p.Addr())
	b[1] = byte(p.Bits())
	b[3] = unix.RT_SCOPE_UNIVERSE
	ne.PutUint32(b[4:], uint32(index))
	a := p.Addr().AsSlice()
	b = attr(b, unix.IFA_LOCAL, a)
	return attr(b, unix.IFA_ADDRESS, a)
}

// defaultRoute is an rtmsg for a default route via gw out of index, in
// the main table.
func defaultRoute(index int, gw netip.Addr) []byte {
	b := make([]byte, unix.SizeofRtMsg)
	b[0] = family(gw)
	b[4] = unix.RT_TABLE_MAIN
	b[5] = unix.RTPROT_BOOT
	b[6] = unix.RT_SCOPE_UNIVERSE
	b[7] = unix.RTN_UNICAST
	b = attr(b, unix.RTA_GATEWAY, gw.AsSlice())
	return attr(b, unix.RTA_OIF, u32(uint32(index)))
}

func family(a netip.Addr) byte {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func u32(v uint32) []byte { return ne.AppendUint32(nil, v) }

// attr appends a route attribute (struct rtattr and its payload, padded to
// 4 bytes) to b.
func attr(b []byte, typ uint16, payload []byte) []byte {
	n := unix.SizeofRtAttr + len(payload)
	b = ne.AppendUint16(b, uint16(n))
	b = ne.AppendUint16(b, typ)
	b = append(b, payload...)
	return append(b, make([]byte, nlmAlign(n)-n)...)
}

func nlmAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// message frames body as a netlink request of type typ, asking for an
// acknowledgement.
func message(typ uint16, flags uint16, seq uint32, body []byte) []byte {
	b := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	ne.PutUint32(b[0:], uint32(unix.SizeofNlMsghdr+len(body)))
	ne.PutUint16(b[4:], typ)
	ne.PutUint16(b[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	ne.PutUint32(b[8:], seq)
	return append(b, body...)
}

// errMalformed is a reply the kernel would not send.
var errMalformed = errors.New("rtnetlink: malformed reply")

// ack finds the acknowledgement of request seq among the messages in b:
// done is false if b holds none; err is the kernel's answer (nil: done).
func ack(b []byte, seq uint32) (done bool, err error) {
	for len(b) >= unix.SizeofNlMsghdr {
		n := int(ne.Uint32(b[0:]))
		if n < unix.SizeofNlMsghdr || n > len(b) {
			return true, errMalformed
		}
		typ, s := ne.Uint16(b[4:]), ne.Uint32(b[8:])
		if typ == unix.NLMSG_ERROR && s == seq {
			if n < unix.SizeofNlMsghdr+4 {
				return true, errMalformed
			}
			if e := int32(ne.Uint32(b[unix.SizeofNlMsghdr:])); e != 0 {
				return true, unix.Errno(-e)
			}
			return true, nil
		}
		b = b[min(nlmAlign(n), len(b)):]
	}
	return false, nil
}
