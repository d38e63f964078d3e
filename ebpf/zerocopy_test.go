package ebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	cilium "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The tests play a guest: its "granted" pages are the test's own user pages,
// sent over TCP with MSG_ZEROCOPY so that the kernel's socket buffers refer
// to them directly, as they refer to grants when blkdom writes with O_DIRECT
// to network storage. This file builds that world: a private network
// namespace, a TCP connection over its loopback device, nftables rules that
// drop the data to force retransmits, and the learning program (learn.c)
// that tells which struct pages the socket buffers use.
//
// On loopback, the receiving side gets a copy (the kernel copies zerocopy
// fragments before local delivery, and the sender's completion notification
// says SO_EE_CODE_ZEROCOPY_COPIED), but the sender's own buffers, the ones
// TCP keeps for retransmission and hands to the device, still refer to the
// user pages: zeroCopyPeer.learn checks that with /proc/self/pagemap.

// netns is a goroutine locked to an OS thread that lives in a new network
// namespace. Sockets it creates, and commands it starts, belong to that
// namespace.
type netns struct {
	calls chan func()
}

func newNetns(t testing.TB) *netns {
	t.Helper()
	ns := &netns{calls: make(chan func())}
	errc := make(chan error)
	go func() {
		// Never unlocked: the thread exits with the goroutine, namespace and all.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare network namespace: %w", err)
			return
		}
		errc <- nil
		for f := range ns.calls {
			f()
		}
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(ns.calls) })
	if err := ns.do(setLoopbackUp); err != nil {
		t.Fatal(err)
	}
	return ns
}

func (ns *netns) do(f func() error) error {
	errc := make(chan error)
	ns.calls <- func() { errc <- f() }
	return <-errc
}

// nft runs nft with a script inside the namespace.
func (ns *netns) nft(script string) error {
	if _, err := exec.LookPath("nft"); err != nil {
		return errors.New("the tests need nft (Debian package nftables)")
	}
	return ns.do(func() error {
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft: %v: %s", err, out)
		}
		return nil
	})
}

func setLoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}

// zeroCopyPeer is a TCP connection in a private namespace whose sender
// transmits a buffer of user pages with MSG_ZEROCOPY.
type zeroCopyPeer struct {
	ns             *netns
	client, server int      // socket descriptors
	cport, sport   int      // local ports of client and server
	buf            []byte   // what the client sends
	anon           []byte   // buf, when the peer mapped it
	got            []byte   // what the server received
	pages          []uint64 // struct page address of each page of buf, once learned
}

const peerPages = 16

// newZeroCopyPeer connects in a new namespace. The sender's buffer is buf,
// or, if buf is nil, peerPages pages of anonymous memory with a pattern.
func newZeroCopyPeer(t testing.TB, buf []byte) *zeroCopyPeer {
	t.Helper()
	requireRoot(t)
	z := &zeroCopyPeer{ns: newNetns(t), client: -1, server: -1}
	t.Cleanup(z.close)
	if err := z.ns.do(z.connect); err != nil {
		t.Fatal(err)
	}
	if buf == nil {
		var err error
		if z.anon, err = unix.Mmap(-1, 0, peerPages*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
			t.Fatal(err)
		}
		buf = z.anon
		for i := range buf {
			buf[i] = byte(i/pageSize) ^ byte(i)
		}
	}
	z.buf = buf
	z.got = make([]byte, len(buf))
	return z
}

const pageSize = 4096

func (z *zeroCopyPeer) connect() error {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(lfd)
	loopback := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if err := unix.Bind(lfd, loopback); err != nil {
		return err
	}
	if err := unix.Listen(lfd, 1); err != nil {
		return err
	}
	if z.sport, err = localPort(lfd); err != nil {
		return err
	}
	if z.client, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
		return err
	}
	// The send must not wait for buffer space while every packet is dropped.
	if err := unix.SetsockoptInt(z.client, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20); err != nil {
		return err
	}
	if err := unix.SetsockoptInt(z.client, unix.SOL_SOCKET, unix.SO_ZEROCOPY, 1); err != nil {
		return fmt.Errorf("SO_ZEROCOPY: %w", err)
	}
	if err := unix.Connect(z.client, &unix.SockaddrInet4{Port: z.sport, Addr: loopback.Addr}); err != nil {
		return err
	}
	if z.cport, err = localPort(z.client); err != nil {
		return err
	}
	if z.server, _, err = unix.Accept4(lfd, unix.SOCK_CLOEXEC); err != nil {
		return err
	}
	tv := unix.NsecToTimeval(int64(10 * time.Second))
	return unix.SetsockoptTimeval(z.server, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
}

func localPort(fd int) (int, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return 0, err
	}
	return sa.(*unix.SockaddrInet4).Port, nil
}

func (z *zeroCopyPeer) close() {
	for _, fd := range []int{z.client, z.server} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	if z.anon != nil {
		unix.Munmap(z.anon)
	}
}

// dropData makes the namespace drop every packet to the server's port
// after transmission, on its way in.
func (z *zeroCopyPeer) dropData() error {
	return z.ns.nft(fmt.Sprintf(`table inet blkdomtest {
	chain in {
		type filter hook input priority 0; policy accept;
		tcp dport %d drop
	}
}
`, z.sport))
}

func (z *zeroCopyPeer) passData() error {
	return z.ns.nft("delete table inet blkdomtest\n")
}

// send transmits the whole buffer with MSG_ZEROCOPY.
func (z *zeroCopyPeer) send() error {
	n, err := unix.SendmsgN(z.client, z.buf, nil, nil, unix.MSG_ZEROCOPY|unix.MSG_DONTWAIT)
	if err != nil {
		return fmt.Errorf("send with MSG_ZEROCOPY: %w", err)
	}
	if n != len(z.buf) {
		return fmt.Errorf("sent %d of %d bytes", n, len(z.buf))
	}
	return nil
}

// receive reads one buffer's worth at the server and checks the contents.
func (z *zeroCopyPeer) receive() error {
	got := z.got
	for off := 0; off < len(got); {
		n, err := unix.Read(z.server, got[off:])
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		if n == 0 {
			return errors.New("receive: connection closed")
		}
		off += n
	}
	if !slices.Equal(got, z.buf) {
		return errors.New("received data differs from the data sent")
	}
	return nil
}

// retransmits is the number of segments TCP retransmitted so far.
func (z *zeroCopyPeer) retransmits() (uint32, error) {
	info, err := unix.GetsockoptTCPInfo(z.client, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0, err
	}
	return info.Total_retrans, nil
}

// awaitRetransmit waits until TCP has retransmitted more than it had.
func (z *zeroCopyPeer) awaitRetransmit(t testing.TB) {
	t.Helper()
	before, err := z.retransmits()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		n, err := z.retransmits()
		if err != nil {
			t.Fatal(err)
		}
		if n > before {
			// Let the probes of this retransmission finish.
			time.Sleep(20 * time.Millisecond)
			return
		}
	}
	t.Fatalf("no retransmission within 15s (still %d)", before)
}

// zeroCopyCopied drains the client's zerocopy notifications and reports
// whether the kernel said it had to copy the data.
func (z *zeroCopyPeer) zeroCopyCopied() (copied bool, notes int, err error) {
	oob := make([]byte, 256)
	for {
		_, oobn, _, _, err := unix.Recvmsg(z.client, nil, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			return copied, notes, nil
		}
		if err != nil {
			return copied, notes, err
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return copied, notes, err
		}
		for _, m := range msgs {
			if m.Header.Level != unix.SOL_IP || m.Header.Type != unix.IP_RECVERR || len(m.Data) < 8 {
				continue
			}
			// struct sock_extended_err: ee_errno u32, ee_origin u8, ee_type u8, ee_code u8
			if m.Data[4] == unix.SO_EE_ORIGIN_ZEROCOPY {
				notes++
				copied = copied || m.Data[6]&unix.SO_EE_CODE_ZEROCOPY_COPIED != 0
			}
		}
	}
}

// learn finds the struct pages of z.buf: it attaches learn.c's program, which
// records the fragment pages of the client's packets, sends the buffer, and
// checks the recorded pages against /proc/self/pagemap before trusting them.
// It leaves the data in flight.
func (z *zeroCopyPeer) learn(t testing.TB) {
	t.Helper()
	var objs learnObjects
	if err := loadLearnObjects(&objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	if err := objs.LearnPort.Update(uint32(0), uint32(z.cport), cilium.UpdateAny); err != nil {
		t.Fatal(err)
	}
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "net_dev_start_xmit", Program: objs.LearnXmit})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	if err := z.send(); err != nil {
		t.Fatal(err)
	}
	var seen []uint64
	deadline := time.Now().Add(5 * time.Second)
	for len(seen) < peerPages && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		seen = seen[:0]
		var page uint64
		var one uint8
		for it := objs.Learned.Iterate(); it.Next(&page, &one); {
			seen = append(seen, page)
		}
	}
	if len(seen) != peerPages {
		t.Fatalf("learned %d fragment pages, want %d", len(seen), peerPages)
	}
	z.pages = z.matchPagemap(t, seen)
}

// matchPagemap returns, for each page of z.buf, the one of the learned
// struct page addresses that describes it. The kernel keeps struct pages in
// an array indexed by page frame number (x86-64's vmemmap), so a learned
// address belongs to a page of z.buf exactly when all of them sit at the
// same base minus pfn*sizeof(struct page).
func (z *zeroCopyPeer) matchPagemap(t testing.TB, learned []uint64) []uint64 {
	t.Helper()
	size := structPageSize(t)
	pfns := make([]uint64, peerPages)
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range pfns {
		var entry [8]byte
		vpage := int64(addrOf(z.buf[i*pageSize:]) / pageSize)
		if _, err := f.ReadAt(entry[:], vpage*8); err != nil {
			t.Fatal(err)
		}
		e := binary.LittleEndian.Uint64(entry[:])
		if e&(1<<63) == 0 || e&(1<<55-1) == 0 {
			t.Fatalf("page %d of the buffer: pagemap entry %#x has no frame number", i, e)
		}
		pfns[i] = e & (1<<55 - 1)
	}
	// The map from frame number to struct page is increasing: pair the
	// sorted lists.
	byPFN := slices.Clone(pfns)
	slices.Sort(byPFN)
	sorted := slices.Clone(learned)
	slices.Sort(sorted)
	base := sorted[0] - byPFN[0]*size
	pageOf := make(map[uint64]uint64)
	for j := range sorted {
		if sorted[j]-byPFN[j]*size != base {
			t.Fatalf("learned pages %#x are not the struct pages of the buffer's frames %v", sorted, byPFN)
		}
		pageOf[byPFN[j]] = sorted[j]
	}
	pages := make([]uint64, peerPages)
	for i, pfn := range pfns {
		pages[i] = pageOf[pfn]
	}
	return pages
}

func structPageSize(t testing.TB) uint64 {
	t.Helper()
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	typ, err := spec.AnyTypeByName("page")
	if err != nil {
		t.Fatal(err)
	}
	size, err := btf.Sizeof(typ)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(size)
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs and creates network namespaces")
	}
}
