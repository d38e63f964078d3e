package gnttab

import (
	"bytes"
	"os"
	"strconv"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// These tests run only on Xen: they grant pages of this domain to itself
// through /dev/xen/gntalloc and map them back through /dev/xen/gntdev.
// The domain id is BLKDOM_SELF_DOMID, default 0 (dom0).

const (
	ioctlGntallocAlloc   = 0x00184705 // _IOC(_IOC_NONE, 'G', 5, 24)
	ioctlGntallocDealloc = 0x00104706 // _IOC(_IOC_NONE, 'G', 6, 16)
	gntallocWritable     = 1
)

type gntallocAlloc struct {
	domid uint16
	flags uint16
	count uint32
	index uint64
	refs  [MaxBatch]uint32
}

type gntallocDealloc struct {
	index uint64
	count uint32
	_     uint32
}

func TestGntallocIoctlNumbers(t *testing.T) {
	if got := ioc(iocNone, 'G', 5, unsafe.Offsetof(gntallocAlloc{}.refs)+8); got != ioctlGntallocAlloc {
		t.Errorf("ALLOC_GNTREF: _IOC gives %#x", got)
	}
	if got := ioc(iocNone, 'G', 6, unsafe.Sizeof(gntallocDealloc{})); got != ioctlGntallocDealloc {
		t.Errorf("DEALLOC_GNTREF: _IOC gives %#x", got)
	}
}

// selfGrants allocates n pages granted by this domain to itself.
func selfGrants(t testing.TB, n int, writable bool) (dom uint32, refs []Ref, mem []byte) {
	t.Helper()
	if _, err := os.Stat(DevicePath); err != nil {
		t.Skipf("no Xen here: %v", err)
	}
	if s := os.Getenv("BLKDOM_SELF_DOMID"); s != "" {
		v, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			t.Fatal(err)
		}
		dom = uint32(v)
	}
	fd, err := unix.Open("/dev/xen/gntalloc", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	arg := &gntallocAlloc{domid: uint16(dom), count: uint32(n)}
	if writable {
		arg.flags = gntallocWritable
	}
	if err := ioctl(fd, ioctlGntallocAlloc, arg); err != nil {
		t.Fatalf("gntalloc: %v", err)
	}
	mem, err = unix.Mmap(fd, int64(arg.index), n*PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Munmap(mem)
		ioctl(fd, ioctlGntallocDealloc, &gntallocDealloc{index: arg.index, count: uint32(n)})
	})
	for _, r := range arg.refs[:n] {
		refs = append(refs, Ref(r))
	}
	return dom, refs, mem
}

func openReal(t *testing.T) *Device {
	t.Helper()
	d, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestXenMapIsZeroCopy(t *testing.T) {
	dom, refs, mem := selfGrants(t, 11, true)
	d := openReal(t)
	if err := d.SetMaxGrants(64); err != nil {
		t.Fatal(err)
	}
	for i := range mem {
		mem[i] = byte(i * 7)
	}
	m, err := d.Map(dom, refs, true)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.Mem, mem) {
		t.Fatal("mapped grants differ from the granted pages")
	}
	copy(m.Mem[PageSize*3:], "written by the backend")
	if !bytes.HasPrefix(mem[PageSize*3:], []byte("written by the backend")) {
		t.Error("a write through the mapping did not reach the granted page")
	}
	if err := d.Unmap(m); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		m, err := d.Map(dom, refs, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Unmap(m); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Map+Unmap allocates %v times", allocs)
	}
}

func TestXenReadOnlyGrantRefusesWritableMap(t *testing.T) {
	dom, refs, _ := selfGrants(t, 2, false)
	d := openReal(t)
	if m, err := d.Map(dom, refs, true); err == nil {
		d.Unmap(m)
		t.Fatal("writable map of a read-only grant succeeded")
	}
	m, err := d.Map(dom, refs, false)
	if err != nil {
		t.Fatalf("read-only map of a read-only grant: %v", err)
	}
	if err := d.Unmap(m); err != nil {
		t.Fatal(err)
	}
}

func TestXenCopy(t *testing.T) {
	dom, refs, mem := selfGrants(t, 1, true)
	d := openReal(t)
	copy(mem[100:], "from the guest")
	in := make([]byte, 14)
	segs := []CopySegment{
		{Dom: dom, Ref: refs[0], Offset: 100, Local: in},
		{Dom: dom, Ref: refs[0], Offset: 2000, Local: []byte("to the guest"), ToGrant: true},
		{Dom: dom, Ref: refs[0] + 1000, Local: in}, // not granted
	}
	err := d.Copy(segs)
	if segs[0].Status != StatusOK || segs[1].Status != StatusOK || segs[2].Status == StatusOK {
		t.Fatalf("statuses %v %v %v, err %v", segs[0].Status, segs[1].Status, segs[2].Status, err)
	}
	if ce, ok := err.(*CopyError); !ok || ce.First != 2 || ce.Failed != 1 {
		t.Errorf("Copy = %v, want segment #2 to fail", err)
	}
	if string(in) != "from the guest" || string(mem[2000:2012]) != "to the guest" {
		t.Errorf("copied %q and %q", in, mem[2000:2012])
	}
}

// BenchmarkXenMapPerPage is what mapping and unmapping grants costs on
// real Xen, per page, for the batch sizes the backend uses: one page (a
// persistent grant, mapped once), 11 (a direct request), 32 (Linux
// blkfront's indirect request) and 256 (blkdom's largest). Each iteration
// is one Map (ioctl and mmap, where Xen maps) and one Unmap (munmap and
// ioctl); ns/page is the cost of one page of it.
func BenchmarkXenMapPerPage(b *testing.B) {
	for _, n := range []int{1, 11, 32, 256} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			dom, refs, _ := selfGrants(b, n, true)
			d, err := Open()
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				m, err := d.Map(dom, refs, true)
				if err != nil {
					b.Fatal(err)
				}
				if err := d.Unmap(m); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/page")
		})
	}
}
