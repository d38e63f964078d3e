package gnttab_test

import (
	"fmt"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"blkdom/gnttab"
	"blkdom/xentest"
)

// These run only on Xen (scripts/vmtest.sh gnttab): they grant pages of
// this domain to itself and map them back through /dev/xen/gntdev. What
// every implementation of blkback's Grants must do, the Device included,
// is checked by blkback/platformtest; here is what is the Device's own.

func openReal(t testing.TB) *gnttab.Device {
	t.Helper()
	d, err := gnttab.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// Map and Unmap allocate nothing: their ioctl arguments live in the Device.
func TestXenMapAllocatesNothing(t *testing.T) {
	dom, refs, _ := xentest.SelfGrants(t, 11, true)
	d := openReal(t)
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

// BenchmarkXenMapPerPage is what mapping and unmapping grants costs on
// real Xen, per page, for the batch sizes the backend uses: one page (a
// persistent grant, mapped once), 11 (a direct request), 32 (Linux
// blkfront's indirect request) and 256 (blkdom's largest). Each iteration
// is one Map (ioctl and mmap, where Xen maps) and one Unmap (munmap and
// ioctl); ns/page is the cost of one page of it.
func BenchmarkXenMapPerPage(b *testing.B) {
	for _, n := range []int{1, 11, 32, 256} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			dom, refs, _ := xentest.SelfGrants(b, n, true)
			d := openReal(b)
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

// nullBlock is null_blk's first device: direct reads from it move no data
// and complete at once, so what a read costs is the kernel's way there and
// back, pinning the destination pages included.
const nullBlock = "/dev/nullb0"

// BenchmarkXenDirectRead is what an O_DIRECT read of n pages costs into
// mapped grants against the same read into the process's own memory: the
// kernel pins grant mappings of a PV domain page by page through gntdev
// (they are special PTEs, which the lockless fast path refuses). The
// grants are read into as blkback's persistent-grant cache keeps them
// (each page mapped alone, one iovec each; "busy": with 1,024 more such
// mappings alive, as a Linux frontend's 1,056 persistent grants leave
// them) and as one batch mapping read with one iovec. It needs null_blk
// loaded (scripts/vmtest.sh does).
func BenchmarkXenDirectRead(b *testing.B) {
	fd, err := unix.Open(nullBlock, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Skipf("no null_blk device: %v", err)
	}
	b.Cleanup(func() { unix.Close(fd) })
	for _, n := range []int{1, 32} {
		dom, refs, _ := xentest.SelfGrants(b, n, true)
		d := openReal(b)
		mapOne := func(ref gnttab.Ref) []byte {
			m, err := d.Map(dom, []gnttab.Ref{ref}, true)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { d.Unmap(m) })
			return m.Mem
		}
		grants := make([][]byte, n)
		for i, ref := range refs {
			grants[i] = mapOne(ref)
		}
		batch, err := d.Map(dom, refs, true)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { d.Unmap(batch) })
		own, err := unix.Mmap(-1, 0, n*gnttab.PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { unix.Munmap(own) })
		pages := func(mem []byte) [][]byte {
			iov := make([][]byte, n)
			for i := range iov {
				iov[i] = mem[i*gnttab.PageSize : (i+1)*gnttab.PageSize]
			}
			return iov
		}
		read := func(name string, iov [][]byte) {
			b.Run(fmt.Sprintf("%s/%d", name, n), func(b *testing.B) {
				b.SetBytes(int64(n * gnttab.PageSize))
				for b.Loop() {
					if got, err := unix.Preadv(fd, iov, 0); err != nil || got != n*gnttab.PageSize {
						b.Fatalf("preadv: %d, %v", got, err)
					}
				}
			})
		}
		read("grants", grants)
		read("batch", [][]byte{batch.Mem})
		read("batch-pages", pages(batch.Mem))
		read("own", pages(own))
		read("own-one", [][]byte{own})
		if n == 32 {
			for i := range 1024 {
				mapOne(refs[i%n])
			}
			read("grants-busy", grants)
			read("batch-busy", [][]byte{batch.Mem})
		}
	}
}
