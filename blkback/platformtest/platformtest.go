// Package platformtest is the contract of blkback's platform interfaces,
// Grants and Events: what the backend relies on from any implementation.
// Run checks it against one; the package's own tests run it against the
// simulated Xen (xensim) everywhere and against Linux's devices
// (gnttab.Device, evtchn.Device) on real Xen, where scripts/vmtest.sh
// blkback/platformtest runs them in a PV dom0.
package platformtest

import (
	"bytes"
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"blkdom/blkback"
	"blkdom/evtchn"
	"blkdom/gnttab"
)

// Peer is the other side of the platform under test: the domain that
// grants pages and offers event-channel ports, as a frontend does.
type Peer struct {
	// Dom is the peer's domain id; Backend is the domain id of the side
	// under test, to which the peer grants and offers.
	Dom, Backend uint32
	// Grant grants n pages to Backend, writable or read-only, for the
	// test's duration, and returns their references and the peer's view of
	// each page.
	Grant func(t *testing.T, n int, writable bool) ([]gnttab.Ref, [][]byte)
	// OpenEvents opens an event-channel handle of the peer, closed with
	// the test.
	OpenEvents func(t *testing.T) PeerEvents
}

// PeerEvents is the peer's side of an event channel.
type PeerEvents interface {
	BindUnboundPort(remote uint32) (evtchn.Port, error)
	Notify(local evtchn.Port) error
	TryWait() (p evtchn.Port, ok bool, err error)
	Unmask(local evtchn.Port) error
}

// within is how long an event may take to arrive: a failing
// implementation fails the test instead of hanging it.
const within = 5 * time.Second

// await polls tryWait until a port fires or within has passed.
func await(t *testing.T, what string, tryWait func() (evtchn.Port, bool, error), want evtchn.Port) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, ok, err := tryWait()
		switch {
		case err != nil:
			t.Fatalf("%s: %v", what, err)
		case ok && got != want:
			t.Fatalf("%s: port %d fired, want %d", what, got, want)
		case ok:
			return
		case time.Now().After(deadline):
			t.Fatalf("%s: port %d did not fire within %v", what, want, within)
		}
		time.Sleep(time.Millisecond)
	}
}

// Run checks the contract of p's Grants and Events against peer.
func Run(t *testing.T, p blkback.Platform, peer Peer) {
	t.Run("Grants", func(t *testing.T) { testGrants(t, p, peer) })
	t.Run("Events", func(t *testing.T) { testEvents(t, p, peer) })
}

func openGrants(t *testing.T, p blkback.Platform) blkback.Grants {
	t.Helper()
	g, err := p.OpenGrants()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func testGrants(t *testing.T, p blkback.Platform, peer Peer) {
	t.Run("MapIsZeroCopy", func(t *testing.T) {
		refs, pages := peer.Grant(t, 3, true)
		for i, pg := range pages {
			copy(pg, bytes.Repeat([]byte{byte(i + 1)}, gnttab.PageSize))
		}
		g := openGrants(t, p)
		m, err := g.Map(peer.Dom, refs, true)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Mem) != len(refs)*gnttab.PageSize {
			t.Fatalf("mapped %d bytes for %d grants", len(m.Mem), len(refs))
		}
		for i, pg := range pages {
			if !bytes.Equal(m.Mem[i*gnttab.PageSize:(i+1)*gnttab.PageSize], pg) {
				t.Fatalf("mapped page %d differs from the granted page", i)
			}
		}
		copy(m.Mem[gnttab.PageSize+100:], "written by the backend")
		if !bytes.HasPrefix(pages[1][100:], []byte("written by the backend")) {
			t.Error("a write through the mapping did not reach the granted page")
		}
		copy(pages[2][7:], "written by the peer")
		if !bytes.HasPrefix(m.Mem[2*gnttab.PageSize+7:], []byte("written by the peer")) {
			t.Error("the peer's write did not show through the mapping")
		}
		if err := g.Unmap(m); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ReadOnlyGrantRefusesWritableMap", func(t *testing.T) {
		refs, _ := peer.Grant(t, 2, false)
		g := openGrants(t, p)
		if m, err := g.Map(peer.Dom, refs, true); err == nil {
			g.Unmap(m)
			t.Fatal("writable map of a read-only grant succeeded")
		}
		m, err := g.Map(peer.Dom, refs, false)
		if err != nil {
			t.Fatalf("read-only map of a read-only grant: %v", err)
		}
		if err := g.Unmap(m); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("MapRefusesBadBatches", func(t *testing.T) {
		refs, _ := peer.Grant(t, 1, true)
		g := openGrants(t, p)
		for _, n := range []int{0, gnttab.MaxBatch + 1} {
			if _, err := g.Map(peer.Dom, make([]gnttab.Ref, n), false); !errors.Is(err, unix.EINVAL) {
				t.Errorf("map of %d refs: %v, want EINVAL", n, err)
			}
		}
		if m, err := g.Map(peer.Dom, []gnttab.Ref{refs[0], refs[0] + 1000}, false); err == nil {
			g.Unmap(m)
			t.Error("map of a batch with a ref not granted succeeded")
		}
	})
	t.Run("Copy", func(t *testing.T) {
		refs, pages := peer.Grant(t, 1, true)
		copy(pages[0][100:], "from the guest")
		g := openGrants(t, p)
		in := make([]byte, 14)
		segs := []gnttab.CopySegment{
			{Dom: peer.Dom, Ref: refs[0], Offset: 100, Local: in},
			{Dom: peer.Dom, Ref: refs[0], Offset: 2000, Local: []byte("to the guest"), ToGrant: true},
			{Dom: peer.Dom, Ref: refs[0] + 1000, Local: make([]byte, 8)}, // not granted
		}
		err := g.Copy(segs)
		if segs[0].Status != gnttab.StatusOK || segs[1].Status != gnttab.StatusOK || segs[2].Status == gnttab.StatusOK {
			t.Fatalf("statuses %v %v %v, err %v", segs[0].Status, segs[1].Status, segs[2].Status, err)
		}
		var ce *gnttab.CopyError
		if !errors.As(err, &ce) || ce.First != 2 || ce.Failed != 1 {
			t.Errorf("Copy = %v, want segment #2 to fail", err)
		}
		if string(in) != "from the guest" || string(pages[0][2000:2012]) != "to the guest" {
			t.Errorf("copied %q and %q", in, pages[0][2000:2012])
		}
	})
	t.Run("Closed", func(t *testing.T) {
		refs, _ := peer.Grant(t, 1, true)
		g, err := p.OpenGrants()
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := g.Map(peer.Dom, refs, false); !errors.Is(err, os.ErrClosed) {
			t.Errorf("map after Close: %v, want os.ErrClosed", err)
		}
	})
}

func testEvents(t *testing.T, p blkback.Platform, peer Peer) {
	fe := peer.OpenEvents(t)
	remote, err := fe.BindUnboundPort(peer.Backend)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := p.OpenEvents()
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			ev.Close()
		}
	}()
	pe, ok := ev.(blkback.PollEvents)
	if !ok {
		t.Fatalf("%T has no Fd and TryWait: the io_uring engine cannot poll it", ev)
	}
	local, err := ev.BindInterdomain(peer.Dom, remote)
	if err != nil {
		t.Fatal(err)
	}
	wait := func(what string) {
		t.Helper()
		await(t, what, pe.TryWait, local)
	}
	// Xen leaves a freshly bound port pending: what the peer signalled
	// before the bind is not lost.
	wait("after the bind")
	if err := ev.Unmask(local); err != nil {
		t.Fatal(err)
	}

	if err := ev.Notify(local); err != nil {
		t.Fatal(err)
	}
	await(t, "the peer, after Notify", fe.TryWait, remote)
	if err := fe.Unmask(remote); err != nil {
		t.Fatal(err)
	}

	// Notifications coalesce while the port is masked, and one that came
	// while masked fires once the port is unmasked.
	for range 2 {
		if err := fe.Notify(remote); err != nil {
			t.Fatal(err)
		}
	}
	wait("after two notifications")
	if err := fe.Notify(remote); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := pe.TryWait(); ok || err != nil {
		t.Fatalf("TryWait of a masked port = %d, %v, %v; want nothing", got, ok, err)
	}
	if err := ev.Unmask(local); err != nil {
		t.Fatal(err)
	}
	wait("after unmasking a port notified while masked")
	if err := ev.Unmask(local); err != nil {
		t.Fatal(err)
	}

	// Close ends a Wait in progress with an error.
	done := make(chan error, 1)
	go func() {
		_, err := ev.Wait()
		done <- err
	}()
	closed = true
	if err := ev.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("Wait returned no error after Close")
		}
	case <-time.After(within):
		t.Error("Close did not end a Wait in progress")
	}
}
