package ebpf

import (
	"os"
	"slices"
	"testing"
	"time"

	"blkdom/gnttab"
	"blkdom/xentest"
)

// TestXenGrantTable runs only in a Xen domain (scripts/vmtest.sh ebpf boots one): it
// drives the whole chain with real grants. This domain grants pages to
// itself (/dev/xen/gntalloc) and maps them like blkdom does
// (/dev/xen/gntdev), which the kprobe on gnttab_map_refs must notice; the
// mapped pages go out over TCP with MSG_ZEROCOPY, by reference, and count
// as in flight; the request completes; sent again, every transmission must
// count as late; unmapping must reach the kprobe on gnttab_unmap_refs. The domain id is BLKDOM_SELF_DOMID, default 0 (dom0).
func TestXenGrantTable(t *testing.T) {
	if _, err := os.Stat(gnttab.DevicePath); err != nil {
		t.Skipf("no Xen here: %v", err)
	}
	requireRoot(t)
	p, err := Load(Options{GrantTable: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	const n = 4
	dom, refs := selfGrants(t, n)
	d, err := gnttab.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	m, err := d.Map(uint32(dom), refs, false)
	if err != nil {
		t.Fatal(err)
	}
	mapped := true
	defer func() {
		if mapped {
			d.Unmap(m)
		}
	}()

	pages := grantedPages(t, p, dom, refs, func(probesGrant) bool { return true })
	z := newZeroCopyPeer(t, m.Mem)
	// Sent before the request completes, the pages are in flight: counted
	// globally, not late.
	if err := z.send(); err != nil {
		t.Fatal(err)
	}
	if err := z.receive(); err != nil {
		t.Fatal(err)
	}
	g, err := p.Global()
	if err != nil {
		t.Fatal(err)
	}
	if g.InFlight[HookXmit] < n || g.Total() != 0 {
		t.Errorf("global counts %+v after sending %d grants in flight, want InFlight[xmit] >= %d and none late", g, n, n)
	}
	t.Logf("references of real grants in flight: %+v", g.InFlight)
	if err := p.Complete(dom, testDisk, refs); err != nil {
		t.Fatal(err)
	}
	if err := z.send(); err != nil {
		t.Fatal(err)
	}
	if err := z.receive(); err != nil {
		t.Fatal(err)
	}
	c, err := p.Counts(testDisk)
	if err != nil {
		t.Fatal(err)
	}
	if c.Xmit < n {
		t.Errorf("counts %+v after sending %d completed grants, want Xmit >= %d", c, n, n)
	}
	var e Event
	p.SetReadDeadline(time.Now().Add(time.Second))
	if err := p.ReadEvent(&e); err != nil {
		t.Fatal(err)
	}
	if i := slices.Index(refs, e.Gref); i < 0 || e.Dom != dom || e.Disk != testDisk || e.Page != pages[i] {
		t.Errorf("event %+v, want one of grants %v of domain %d on pages %#x", e, refs, dom, pages)
	}
	t.Logf("late references of real grants: %+v", c)

	// gntdev unmaps once no one holds the pages: after the zerocopy
	// transmissions are acknowledged and freed.
	mapped = false
	if err := d.Unmap(m); err != nil {
		t.Fatal(err)
	}
	grantedPages(t, p, dom, refs, func(g probesGrant) bool { return g.UnmappedNs != 0 })
}

// grantedPages waits until the granted-page map holds an entry satisfying
// ok for each of refs of dom, and returns their pages in the order of refs.
func grantedPages(t *testing.T, p *Probes, dom uint16, refs []gnttab.Ref, ok func(probesGrant) bool) []uint64 {
	t.Helper()
	pages := make([]uint64, len(refs))
	deadline := time.Now().Add(10 * time.Second)
	for {
		found := 0
		var page uint64
		var g probesGrant
		for it := p.maps.Granted.Iterate(); it.Next(&page, &g); {
			if i := slices.Index(refs, gnttab.Ref(g.Gref)); i >= 0 && g.Domid == dom && ok(g) {
				pages[i] = page
				found++
			}
		}
		if found == len(refs) {
			return pages
		}
		if time.Now().After(deadline) {
			t.Fatalf("granted-page map has %d of the %d grants %v of domain %d in the expected state", found, len(refs), refs, dom)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// selfGrants grants n pages of this domain to itself, read-only, each
// filled with its own pattern.
func selfGrants(t *testing.T, n int) (dom uint16, refs []gnttab.Ref) {
	t.Helper()
	d, refs, mem := xentest.SelfGrants(t, n, false)
	for i := range mem {
		mem[i] = byte(i/gnttab.PageSize) + byte(i)
	}
	return uint16(d), refs
}
