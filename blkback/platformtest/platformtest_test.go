package platformtest_test

import (
	"os"
	"testing"

	"blkdom/blkback"
	"blkdom/blkback/platformtest"
	"blkdom/evtchn"
	"blkdom/gnttab"
	"blkdom/xensim"
	"blkdom/xentest"
)

// The simulated Xen: the backend is domain 0, the peer domain 1.
func TestSimulated(t *testing.T) {
	x, err := xensim.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	be, fe := x.Domain(0), x.Domain(1)
	platformtest.Run(t, blkback.NewPlatform(be.OpenGrants, be.OpenEvents), platformtest.Peer{
		Dom: 1, Backend: 0,
		Grant: func(t *testing.T, n int, writable bool) ([]gnttab.Ref, [][]byte) {
			t.Helper()
			pages, err := fe.AllocPages(n)
			if err != nil {
				t.Fatal(err)
			}
			var refs []gnttab.Ref
			var mem [][]byte
			for _, p := range pages {
				r, err := fe.Grant(0, p.Frame, !writable)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { fe.EndGrant(r) })
				refs, mem = append(refs, r), append(mem, p.Mem)
			}
			return refs, mem
		},
		OpenEvents: func(t *testing.T) platformtest.PeerEvents {
			t.Helper()
			h, err := fe.OpenEvents()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { h.Close() })
			return h
		},
	})
}

// Linux's devices on real Xen: this domain grants pages and offers ports
// to itself (scripts/vmtest.sh blkback/platformtest runs it in a dom0).
func TestLinux(t *testing.T) {
	for _, dev := range []string{gnttab.DevicePath, evtchn.DevicePath, xentest.AllocPath} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("no Xen here: %v", err)
		}
	}
	self := xentest.SelfDomain(t)
	platformtest.Run(t, blkback.NewPlatform(gnttab.Open, evtchn.Open), platformtest.Peer{
		Dom: self, Backend: self,
		Grant: func(t *testing.T, n int, writable bool) ([]gnttab.Ref, [][]byte) {
			_, refs, mem := xentest.SelfGrants(t, n, writable)
			var pages [][]byte
			for i := range n {
				pages = append(pages, mem[i*gnttab.PageSize:(i+1)*gnttab.PageSize])
			}
			return refs, pages
		},
		OpenEvents: func(t *testing.T) platformtest.PeerEvents {
			t.Helper()
			d, err := evtchn.Open()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			return d
		},
	})
}
