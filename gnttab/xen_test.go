package gnttab_test

import (
	"strconv"
	"testing"

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
	if err := d.SetMaxGrants(64); err != nil {
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
