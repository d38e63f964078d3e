package rtnl

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCheck(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	for _, c := range []struct {
		i   Interface
		bad string
	}{
		{Interface{Name: "eth0", Addr: p("169.254.1.2/16"), Gateway: a("169.254.1.1"), MTU: 1500}, ""},
		{Interface{Name: "lo"}, ""},
		{Interface{Name: ""}, "interface name"},
		{Interface{Name: "averyveryverylongname"}, "interface name"},
		{Interface{Name: "eth0", MTU: -1}, "mtu"},
		{Interface{Name: "eth0", MTU: 70000}, "mtu"},
		{Interface{Name: "eth0", Gateway: a("169.254.1.1")}, "needs an address"},
		{Interface{Name: "eth0", Addr: p("169.254.1.2/16"), Gateway: a("fe80::1")}, "different families"},
	} {
		err := c.i.Check()
		if c.bad == "" && err != nil || c.bad != "" && (err == nil || !strings.Contains(err.Error(), c.bad)) {
			t.Errorf("Check(%+v) = %v, want error containing %q", c.i, err, c.bad)
		}
	}
}

func TestString(t *testing.T) {
	for _, c := range []struct {
		i    Interface
		want string
	}{
		{Interface{Name: "lo"}, "lo"},
		{Interface{Name: "eth0", Addr: netip.MustParsePrefix("169.254.1.2/16")}, "eth0 169.254.1.2/16"},
		{Interface{Name: "eth0", Addr: netip.MustParsePrefix("169.254.1.2/16"), Gateway: netip.MustParseAddr("169.254.1.1"), MTU: 1400},
			"eth0 169.254.1.2/16 via 169.254.1.1 mtu 1400"},
	} {
		if got := c.i.String(); got != c.want {
			t.Errorf("%q, want %q", got, c.want)
		}
	}
}

// TestEncoding pins the bytes of each message against the kernel's struct
// layouts (include/uapi/linux/{rtnetlink,if_link,if_addr}.h).
func TestEncoding(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want []byte
	}{
		{"link up", linkUp(3, 0), []byte{0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0}},
		{"link up with mtu", linkUp(3, 1400), []byte{0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0,
			8, 0, unix.IFLA_MTU, 0, 0x78, 0x05, 0, 0}},
		{"v4 address", address(2, netip.MustParsePrefix("169.254.1.2/16")), []byte{unix.AF_INET, 16, 0, 0, 2, 0, 0, 0,
			8, 0, unix.IFA_LOCAL, 0, 169, 254, 1, 2, 8, 0, unix.IFA_ADDRESS, 0, 169, 254, 1, 2}},
		{"v4 default route", defaultRoute(2, netip.MustParseAddr("169.254.1.1")), []byte{unix.AF_INET, 0, 0, 0,
			unix.RT_TABLE_MAIN, unix.RTPROT_BOOT, unix.RT_SCOPE_UNIVERSE, unix.RTN_UNICAST, 0, 0, 0, 0,
			8, 0, unix.RTA_GATEWAY, 0, 169, 254, 1, 1, 8, 0, unix.RTA_OIF, 0, 2, 0, 0, 0}},
	} {
		if !bytes.Equal(c.got, c.want) {
			t.Errorf("%s:\n got % x\nwant % x", c.name, c.got, c.want)
		}
	}
	// An attribute whose payload is not a multiple of 4 is padded.
	if b := attr(nil, 1, []byte{9}); !bytes.Equal(b, []byte{5, 0, 1, 0, 9, 0, 0, 0}) {
		t.Errorf("padded attribute: % x", b)
	}
}

func errMsg(seq uint32, errno int32) []byte {
	// struct nlmsgerr: the error, then the request's header echoed.
	return message(unix.NLMSG_ERROR, 0, seq, append(ne.AppendUint32(nil, uint32(errno)), make([]byte, 16)...))
}

func TestAck(t *testing.T) {
	for _, c := range []struct {
		name string
		b    []byte
		done bool
		err  error
	}{
		{"ok", errMsg(7, 0), true, nil},
		{"error", errMsg(7, -int32(unix.EEXIST)), true, unix.EEXIST},
		{"another request's answer, then ours", append(errMsg(6, -1), errMsg(7, 0)...), true, nil},
		{"no answer", errMsg(6, 0), false, nil},
		{"empty", nil, false, nil},
		{"length beyond the buffer", errMsg(7, 0)[:20], true, errMalformed},
		{"error message too short", message(unix.NLMSG_ERROR, 0, 7, nil), true, errMalformed},
	} {
		done, err := ack(c.b, 7)
		if done != c.done || err != c.err {
			t.Errorf("%s: ack = %v, %v; want %v, %v", c.name, done, err, c.done, c.err)
		}
	}
}

func FuzzAck(f *testing.F) {
	f.Add(errMsg(1, 0))
	f.Add(append(errMsg(2, -1), errMsg(1, -17)...))
	f.Fuzz(func(t *testing.T, b []byte) { ack(b, 1) })
}

// TestConfigure configures one end of a veth pair in a new network
// namespace (only this test's thread is in it, so the host's network is
// untouched): link up with an MTU, a link-local address, a default route,
// then again with another address (the calls replace), and lo. It needs
// root and iproute2 to make the pair.
func TestConfigure(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("needs iproute2's ip to make a veth pair")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread is thrown away when the goroutine ends, locked.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		if out, err := exec.Command(ip, "link", "add", "v0", "type", "veth", "peer", "name", "v1").CombinedOutput(); err != nil {
			t.Errorf("ip link add: %v\n%s", err, out)
			return
		}
		configureIn(t)
	}()
	<-done
}

func configureIn(t *testing.T) {
	c, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ifc, err := net.InterfaceByName("v0")
	if err != nil {
		t.Fatal(err)
	}
	want := Interface{Name: "v0", Addr: netip.MustParsePrefix("169.254.1.2/16"),
		Gateway: netip.MustParseAddr("169.254.1.1"), MTU: 1400}
	if err := c.Configure(ifc.Index, want); err != nil {
		t.Fatal(err)
	}
	check(t, want)
	want.Addr = netip.MustParsePrefix("169.254.7.9/16")
	want.MTU = 1300
	if err := c.Configure(ifc.Index, want); err != nil {
		t.Fatalf("configuring again: %v", err)
	}
	check(t, want)
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Configure(lo.Index, Interface{Name: "lo"}); err != nil {
		t.Fatal(err)
	}
	if lo, _ = net.InterfaceByName("lo"); lo.Flags&net.FlagUp == 0 {
		t.Error("lo is not up")
	}
	// A message the kernel refuses comes back as its error.
	if err := c.Configure(1<<30, Interface{Name: "nosuch"}); err == nil || !strings.Contains(err.Error(), "no such device") {
		t.Errorf("configuring a missing interface: %v", err)
	}
}

// check looks at the interface as the kernel reports it now: up, its MTU,
// want's address among its addresses, and a default route via the gateway
// in this thread's routing table.
func check(t *testing.T, want Interface) {
	t.Helper()
	ifc, err := net.InterfaceByName(want.Name)
	if err != nil {
		t.Fatal(err)
	}
	if ifc.Flags&net.FlagUp == 0 || ifc.MTU != want.MTU {
		t.Errorf("%s: flags %v mtu %d, want up and %d", want.Name, ifc.Flags, ifc.MTU, want.MTU)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range addrs {
		found = found || a.String() == want.Addr.String()
	}
	if !found {
		t.Errorf("%s: addresses %v, want %s among them", want.Name, addrs, want.Addr)
	}
	b, err := os.ReadFile("/proc/thread-self/net/route")
	if err != nil {
		t.Fatal(err)
	}
	// Iface Destination Gateway ...: 169.254.1.1 is 0101FEA9 in the
	// table's host-order hex.
	if !strings.Contains(string(b), want.Name+"\t00000000\t0101FEA9") {
		t.Errorf("no default route via %s in\n%s", want.Gateway, b)
	}
}
