package xensim

import (
	"bytes"
	"errors"
	"os"
	"runtime/debug"
	"testing"

	"blkdom/gnttab"

	"golang.org/x/sys/unix"
)

const (
	backID  = 0
	frontID = 1
	otherID = 2
)

func newXen(t testing.TB) *Xen {
	t.Helper()
	x, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	return x
}

// grantPages allocates n frontend pages, fills page i with byte i+1 and
// grants them all to domain to.
func grantPages(t testing.TB, front *Domain, n int, to uint32, readOnly bool) ([]Page, []gnttab.Ref) {
	t.Helper()
	pages, err := front.AllocPages(n)
	if err != nil {
		t.Fatal(err)
	}
	refs := make([]gnttab.Ref, n)
	for i, p := range pages {
		for j := range p.Mem {
			p.Mem[j] = byte(i + 1)
		}
		if refs[i], err = front.Grant(to, p.Frame, readOnly); err != nil {
			t.Fatal(err)
		}
	}
	return pages, refs
}

func openGrants(t testing.TB, d *Domain) *Grants {
	t.Helper()
	g, err := d.OpenGrants()
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestMapIsZeroCopy(t *testing.T) {
	x := newXen(t)
	front := x.Domain(frontID)
	pages, refs := grantPages(t, front, 11, backID, false)
	g := openGrants(t, x.Domain(backID))
	m, err := g.Map(frontID, refs, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Mem) != 11*gnttab.PageSize {
		t.Fatalf("mapping is %d bytes", len(m.Mem))
	}
	for i, p := range pages {
		if !bytes.Equal(m.Mem[i*gnttab.PageSize:(i+1)*gnttab.PageSize], p.Mem) {
			t.Fatalf("mapped page %d differs from the granted page", i)
		}
		if c := front.GrantMapCount(refs[i]); c != 1 {
			t.Errorf("GrantMapCount(%d) = %d while mapped", refs[i], c)
		}
	}
	copy(m.Mem[5*gnttab.PageSize+100:], "backend wrote this")
	if !bytes.HasPrefix(pages[5].Mem[100:], []byte("backend wrote this")) {
		t.Error("backend write did not land in the frontend's page")
	}
	copy(pages[10].Mem[4000:], "frontend")
	if !bytes.HasPrefix(m.Mem[10*gnttab.PageSize+4000:], []byte("frontend")) {
		t.Error("frontend write not visible through the backend's mapping")
	}
	if err := g.Unmap(m); err != nil {
		t.Fatal(err)
	}
	for _, r := range refs {
		if c := front.GrantMapCount(r); c != 0 {
			t.Errorf("GrantMapCount(%d) = %d after Unmap", r, c)
		}
	}
}

func TestReadOnlyMappingCannotBeWritten(t *testing.T) {
	x := newXen(t)
	front := x.Domain(frontID)
	pages, refs := grantPages(t, front, 1, backID, true)
	g := openGrants(t, x.Domain(backID))
	m, err := g.Map(frontID, refs, false)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Unmap(m)
	if m.Mem[0] != 1 {
		t.Fatalf("read %d through the mapping", m.Mem[0])
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	faulted := func() (f bool) {
		defer func() { f = recover() != nil }()
		m.Mem[0] = 99
		return false
	}()
	if !faulted || pages[0].Mem[0] != 1 {
		t.Errorf("write through a read-only mapping: faulted %v, page now %d", faulted, pages[0].Mem[0])
	}
}

func TestMapRefused(t *testing.T) {
	x := newXen(t)
	front := x.Domain(frontID)
	_, rw := grantPages(t, front, 2, backID, false)
	_, ro := grantPages(t, front, 1, backID, true)
	_, foreign := grantPages(t, front, 1, otherID, false)
	ended, err := front.Grant(backID, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := front.EndGrant(ended); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		dom      uint32
		refs     []gnttab.Ref
		writable bool
		errno    error
		status   gnttab.Status
	}{
		{"read-only grant mapped writable", frontID, ro, true, unix.EPERM, gnttab.StatusPermissionDenied},
		{"granted to another domain", frontID, foreign, false, unix.EINVAL, gnttab.StatusBadRef},
		{"reserved ref 0", frontID, []gnttab.Ref{0}, false, unix.EINVAL, gnttab.StatusBadRef},
		{"ref beyond the table", frontID, []gnttab.Ref{1 << 31}, false, unix.EINVAL, gnttab.StatusBadRef},
		{"ended grant", frontID, []gnttab.Ref{ended}, false, unix.EINVAL, gnttab.StatusBadRef},
		{"unknown domain", 77, rw, false, unix.EINVAL, gnttab.StatusBadDomain},
		{"bad ref last in batch", frontID, append(append([]gnttab.Ref{}, rw...), foreign[0]), false, unix.EINVAL, gnttab.StatusBadRef},
		{"read-only among writable", frontID, []gnttab.Ref{rw[0], ro[0], rw[1]}, true, unix.EPERM, gnttab.StatusPermissionDenied},
		{"no refs", frontID, nil, false, unix.EINVAL, gnttab.StatusOK},
		{"too many refs", frontID, make([]gnttab.Ref, gnttab.MaxBatch+1), false, unix.EINVAL, gnttab.StatusOK},
	} {
		g := openGrants(t, x.Domain(backID))
		m, err := g.Map(tc.dom, tc.refs, tc.writable)
		if err == nil {
			g.Unmap(m)
			t.Errorf("%s: Map succeeded", tc.name)
			continue
		}
		if !errors.Is(err, tc.errno) || (tc.status != gnttab.StatusOK && !errors.Is(err, tc.status)) {
			t.Errorf("%s: err = %v, want %v and %v", tc.name, err, tc.errno, tc.status)
		}
		for _, r := range rw {
			if c := front.GrantMapCount(r); c != 0 {
				t.Errorf("%s: ref %d left mapped %d times", tc.name, r, c)
			}
		}
		if n := len(g.maps); n != 0 {
			t.Errorf("%s: handle recorded %d mappings", tc.name, n)
		}
		g.Close()
	}
}

func TestEndGrantBusyWhileMapped(t *testing.T) {
	x := newXen(t)
	front := x.Domain(frontID)
	pages, refs := grantPages(t, front, 1, backID, false)
	g := openGrants(t, x.Domain(backID))
	m1, err := g.Map(frontID, refs, true)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := g.Map(frontID, refs, false) // the same grant twice
	if err != nil {
		t.Fatal(err)
	}
	if c := front.GrantMapCount(refs[0]); c != 2 {
		t.Errorf("GrantMapCount = %d, want 2", c)
	}
	if err := front.EndGrant(refs[0]); !errors.Is(err, unix.EBUSY) {
		t.Errorf("EndGrant while mapped = %v, want EBUSY", err)
	}
	if err := front.FreePages(pages); !errors.Is(err, unix.EBUSY) {
		t.Errorf("FreePages of a granted page = %v, want EBUSY", err)
	}
	g.Unmap(m1)
	if err := front.EndGrant(refs[0]); !errors.Is(err, unix.EBUSY) {
		t.Errorf("EndGrant while mapped once = %v, want EBUSY", err)
	}
	g.Unmap(m2)
	if err := front.EndGrant(refs[0]); err != nil {
		t.Fatalf("EndGrant after Unmap: %v", err)
	}
	if err := front.EndGrant(refs[0]); !errors.Is(err, unix.EINVAL) {
		t.Errorf("second EndGrant = %v, want EINVAL", err)
	}
	if _, err := g.Map(frontID, refs, false); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Map of an ended grant = %v, want EINVAL", err)
	}
	if err := front.FreePages(pages); err != nil {
		t.Fatalf("FreePages: %v", err)
	}
	if err := front.FreePages(pages); !errors.Is(err, unix.EINVAL) {
		t.Errorf("double FreePages = %v, want EINVAL", err)
	}
	again, err := front.AllocPages(1)
	if err != nil {
		t.Fatal(err)
	}
	if again[0].Frame != pages[0].Frame || !bytes.Equal(again[0].Mem, make([]byte, gnttab.PageSize)) {
		t.Errorf("reallocated frame %d (was %d) is not zeroed", again[0].Frame, pages[0].Frame)
	}
}

func TestUnmapChecksMapping(t *testing.T) {
	x := newXen(t)
	front := x.Domain(frontID)
	_, refs := grantPages(t, front, 3, backID, false)
	g := openGrants(t, x.Domain(backID))
	m, err := g.Map(frontID, refs, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []gnttab.Mapping{
		{Mem: m.Mem, Index: m.Index + 1},
		{Mem: m.Mem[:gnttab.PageSize], Index: m.Index},
		{Mem: m.Mem[gnttab.PageSize:], Index: m.Index},
		{Mem: nil, Index: m.Index},
		{Mem: make([]byte, len(m.Mem)), Index: m.Index},
	} {
		if err := g.Unmap(bad); !errors.Is(err, unix.EINVAL) {
			t.Errorf("Unmap(%d bytes, index %d) = %v, want EINVAL", len(bad.Mem), bad.Index, err)
		}
	}
	if c := front.GrantMapCount(refs[0]); c != 1 {
		t.Fatalf("refused unmaps changed the map count to %d", c)
	}
	if err := g.Unmap(m); err != nil {
		t.Fatal(err)
	}
	if err := g.Unmap(m); !errors.Is(err, unix.EINVAL) {
		t.Errorf("second Unmap = %v, want EINVAL", err)
	}
}

func TestCloseUnmapsLeftovers(t *testing.T) {
	x := newXen(t)
	front := x.Domain(frontID)
	_, refs := grantPages(t, front, 4, backID, false)
	g := openGrants(t, x.Domain(backID))
	for i := range refs {
		if _, err := g.Map(frontID, refs[i:i+1], true); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	for _, r := range refs {
		if c := front.GrantMapCount(r); c != 0 {
			t.Errorf("ref %d still mapped %d times after Close", r, c)
		}
		if err := front.EndGrant(r); err != nil {
			t.Errorf("EndGrant after Close: %v", err)
		}
	}
	if _, err := g.Map(frontID, refs, false); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Map after Close = %v", err)
	}
}

func TestCopy(t *testing.T) {
	x := newXen(t)
	front := x.Domain(frontID)
	pages, rw := grantPages(t, front, 1, backID, false)
	roPages, ro := grantPages(t, front, 1, backID, true)
	_, foreign := grantPages(t, front, 1, otherID, false)
	g := openGrants(t, x.Domain(backID))
	copy(pages[0].Mem[512:], "sector one")
	copy(roPages[0].Mem, "RO!!")
	in := make([]byte, 10)
	out := []byte("written by copy")
	roIn := make([]byte, 4)
	segs := []gnttab.CopySegment{
		{Dom: frontID, Ref: rw[0], Offset: 512, Local: in},
		{Dom: frontID, Ref: rw[0], Offset: 4096 - 15, Local: out, ToGrant: true},
		{Dom: frontID, Ref: ro[0], Local: roIn},
		{Dom: frontID, Ref: ro[0], Local: out, ToGrant: true},
		{Dom: frontID, Ref: foreign[0], Local: in},
		{Dom: frontID, Ref: rw[0], Offset: 4090, Local: out, ToGrant: true},
		{Dom: otherID + 40, Ref: rw[0], Local: in},
		{Dom: frontID, Ref: rw[0], Local: nil},
	}
	want := []gnttab.Status{gnttab.StatusOK, gnttab.StatusOK, gnttab.StatusOK,
		gnttab.StatusPermissionDenied, gnttab.StatusBadRef, gnttab.StatusBadCopyArg,
		gnttab.StatusBadDomain, gnttab.StatusBadCopyArg}
	err := g.Copy(segs)
	for i := range segs {
		if segs[i].Status != want[i] {
			t.Errorf("segment %d: status %v, want %v", i, segs[i].Status, want[i])
		}
	}
	var ce *gnttab.CopyError
	if !errors.As(err, &ce) || ce.First != 3 || ce.Failed != 5 {
		t.Errorf("Copy = %v, want 5 failures from #3", err)
	}
	if string(in) != "sector one" {
		t.Errorf("copied in %q", in)
	}
	if got := string(pages[0].Mem[4096-15:]); got != string(out) {
		t.Errorf("copied out %q", got)
	}
	if string(roIn) != "RO!!" {
		t.Errorf("read of a read-only grant gave %v", roIn)
	}
	if err := g.Copy(segs[:3]); err != nil {
		t.Errorf("Copy of good segments = %v", err)
	}
}

func TestMapUnmapAllocs(t *testing.T) {
	x := newXen(t)
	_, refs := grantPages(t, x.Domain(frontID), 11, backID, false)
	g := openGrants(t, x.Domain(backID))
	allocs := testing.AllocsPerRun(100, func() {
		m, err := g.Map(frontID, refs, true)
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Unmap(m); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Map+Unmap allocates %v times", allocs)
	}
	segs := []gnttab.CopySegment{{Dom: frontID, Ref: refs[0], Local: make([]byte, 512)}}
	if allocs := testing.AllocsPerRun(100, func() { g.Copy(segs) }); allocs != 0 {
		t.Errorf("Copy allocates %v times", allocs)
	}
}

func BenchmarkMapUnmap11(b *testing.B) {
	x := newXen(b)
	_, refs := grantPages(b, x.Domain(frontID), 11, backID, false)
	g := openGrants(b, x.Domain(backID))
	b.ReportAllocs()
	for b.Loop() {
		m, err := g.Map(frontID, refs, true)
		if err != nil {
			b.Fatal(err)
		}
		if err := g.Unmap(m); err != nil {
			b.Fatal(err)
		}
	}
}

func TestXenClose(t *testing.T) {
	x, err := New()
	if err != nil {
		t.Fatal(err)
	}
	front := x.Domain(frontID)
	_, refs := grantPages(t, front, 2, backID, false)
	g := openGrants(t, x.Domain(backID))
	if _, err := g.Map(frontID, refs, true); err != nil {
		t.Fatal(err)
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Map(frontID, refs, true); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Map after Xen.Close = %v", err)
	}
	if _, err := front.AllocPages(1); !errors.Is(err, os.ErrClosed) {
		t.Errorf("AllocPages after Xen.Close = %v", err)
	}
	if err := x.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close = %v", err)
	}
}
