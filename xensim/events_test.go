package xensim

import (
	"errors"
	"os"
	"testing"
	"time"

	"blkdom/evtchn"

	"golang.org/x/sys/unix"
)

func openEvents(t testing.TB, d *Domain) *Events {
	t.Helper()
	h, err := d.OpenEvents()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// queued is how many deliveries wait in h for Wait.
func queued(h *Events) int {
	h.x.mu.Lock()
	defer h.x.mu.Unlock()
	return h.n
}

func mustWait(t testing.TB, h *Events, want evtchn.Port) {
	t.Helper()
	got, err := h.Wait()
	if err != nil || got != want {
		t.Fatalf("Wait = %d, %v; want %d", got, err, want)
	}
}

// connect binds a frontend port (allocated unbound for the backend) to a
// backend port and consumes the event Xen raises on binding.
func connect(t testing.TB, x *Xen) (front, back *Events, fp, bp evtchn.Port) {
	t.Helper()
	front = openEvents(t, x.Domain(frontID))
	back = openEvents(t, x.Domain(backID))
	fp, err := front.BindUnboundPort(backID)
	if err != nil {
		t.Fatal(err)
	}
	if bp, err = back.BindInterdomain(frontID, fp); err != nil {
		t.Fatal(err)
	}
	mustWait(t, back, bp)
	if err := back.Unmask(bp); err != nil {
		t.Fatal(err)
	}
	return front, back, fp, bp
}

func TestEventMasking(t *testing.T) {
	x := newXen(t)
	front, back, fp, bp := connect(t, x)

	// Two notifies before an unmask: one delivery, the second stays pending.
	front.Notify(fp)
	front.Notify(fp)
	if n := queued(back); n != 1 {
		t.Fatalf("%d deliveries queued after two notifies, want 1", n)
	}
	mustWait(t, back, bp)
	front.Notify(fp)
	if n := queued(back); n != 0 {
		t.Fatalf("notify of a masked port delivered it (%d queued)", n)
	}
	// Unmask of a pending port redelivers it, once.
	if err := back.Unmask(bp); err != nil {
		t.Fatal(err)
	}
	if n := queued(back); n != 1 {
		t.Fatalf("%d deliveries after unmasking a pending port, want 1", n)
	}
	mustWait(t, back, bp)
	// Unmask of a port not notified meanwhile delivers nothing.
	back.Unmask(bp)
	if n := queued(back); n != 0 {
		t.Fatalf("unmask without pending delivered %d", n)
	}
	// And the other direction.
	back.Notify(bp)
	mustWait(t, front, fp)
	front.Unmask(fp)
	if n := queued(front) + queued(back); n != 0 {
		t.Fatalf("%d stray deliveries", n)
	}
}

func TestEventDeliveryToRightHandle(t *testing.T) {
	x := newXen(t)
	front := openEvents(t, x.Domain(frontID))
	back1 := openEvents(t, x.Domain(backID))
	back2 := openEvents(t, x.Domain(backID))
	f1, _ := front.BindUnboundPort(backID)
	f2, _ := front.BindUnboundPort(backID)
	b1, err := back1.BindInterdomain(frontID, f1)
	if err != nil {
		t.Fatal(err)
	}
	b2, err := back2.BindInterdomain(frontID, f2)
	if err != nil {
		t.Fatal(err)
	}
	if b1 == b2 {
		t.Fatalf("two bindings got port %d", b1)
	}
	mustWait(t, back1, b1)
	mustWait(t, back2, b2)
	back1.Unmask(b1)
	back2.Unmask(b2)
	front.Notify(f2)
	if queued(back1) != 0 || queued(back2) != 1 {
		t.Fatalf("notify of f2 queued %d on back1, %d on back2", queued(back1), queued(back2))
	}
	mustWait(t, back2, b2)
	// A handle cannot use another handle's port.
	for name, err := range map[string]error{
		"notify":  back1.Notify(b2),
		"unmask":  back1.Unmask(b2),
		"unbind":  back1.Unbind(b2),
		"port 0":  back1.Notify(0),
		"too big": back1.Notify(1 << 30),
	} {
		if !errors.Is(err, unix.EINVAL) {
			t.Errorf("%s: %v, want EINVAL", name, err)
		}
	}
}

func TestBindInterdomainRefused(t *testing.T) {
	x := newXen(t)
	front := openEvents(t, x.Domain(frontID))
	back := openEvents(t, x.Domain(backID))
	forOther, _ := front.BindUnboundPort(otherID)
	forBack, _ := front.BindUnboundPort(backID)
	if _, err := back.BindInterdomain(frontID, forBack); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		dom    uint32
		remote evtchn.Port
	}{
		{"port allocated for another domain", frontID, forOther},
		{"port already bound", frontID, forBack},
		{"port never allocated", frontID, 1000},
		{"port 0", frontID, 0},
		{"unknown domain", 99, forBack},
	} {
		if p, err := back.BindInterdomain(tc.dom, tc.remote); !errors.Is(err, unix.EINVAL) {
			t.Errorf("%s: BindInterdomain = %d, %v; want EINVAL", tc.name, p, err)
		}
	}
}

func TestUnbindReturnsPeerToUnbound(t *testing.T) {
	x := newXen(t)
	front, back, fp, bp := connect(t, x)
	back.Notify(bp)
	front.Notify(fp)
	if err := back.Unbind(bp); err != nil {
		t.Fatal(err)
	}
	if n := queued(back); n != 0 {
		t.Errorf("unbound port's delivery still queued (%d)", n)
	}
	if err := front.Notify(fp); err != nil {
		t.Errorf("notify with the peer gone = %v, want nil (dropped)", err)
	}
	// The frontend's port is unbound again: a backend may bind it anew
	// (reconnect), and gets the binding event.
	bp2, err := back.BindInterdomain(frontID, fp)
	if err != nil {
		t.Fatalf("rebind: %v", err)
	}
	mustWait(t, back, bp2)
	back.Unmask(bp2)
	front.Unmask(fp)
	front.Notify(fp)
	mustWait(t, back, bp2)
}

func TestCloseUnblocksWait(t *testing.T) {
	x := newXen(t)
	_, back, _, _ := connect(t, x)
	errc := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := back.Wait()
			errc <- err
		}()
	}
	time.Sleep(20 * time.Millisecond)
	if err := back.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case err := <-errc:
			if !errors.Is(err, os.ErrClosed) {
				t.Errorf("Wait after Close = %v, want os.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not unblock Wait")
		}
	}
	if err := back.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close = %v", err)
	}
	if _, err := back.BindUnboundPort(frontID); !errors.Is(err, os.ErrClosed) {
		t.Errorf("bind after Close = %v", err)
	}
}

func TestManyPortsOneHandle(t *testing.T) {
	x := newXen(t)
	front := openEvents(t, x.Domain(frontID))
	back := openEvents(t, x.Domain(backID))
	const n = 50
	var fps, bps []evtchn.Port
	for range n {
		fp, _ := front.BindUnboundPort(backID)
		bp, err := back.BindInterdomain(frontID, fp)
		if err != nil {
			t.Fatal(err)
		}
		fps, bps = append(fps, fp), append(bps, bp)
	}
	// Every binding fired once; all are queued, none lost while the
	// handle's queue grew.
	seen := map[evtchn.Port]bool{}
	for range n {
		p, _ := back.Wait()
		seen[p] = true
		back.Unmask(p)
	}
	for _, bp := range bps {
		if !seen[bp] {
			t.Errorf("port %d never fired", bp)
		}
	}
	for _, fp := range fps {
		front.Notify(fp)
		front.Notify(fp)
	}
	if q := queued(back); q != n {
		t.Errorf("%d queued, want %d", q, n)
	}
}

func TestNotifyWaitUnmaskAllocs(t *testing.T) {
	x := newXen(t)
	front, back, fp, bp := connect(t, x)
	allocs := testing.AllocsPerRun(200, func() {
		front.Notify(fp)
		mustWait(t, back, bp)
		back.Unmask(bp)
		back.Notify(bp)
		mustWait(t, front, fp)
		front.Unmask(fp)
	})
	if allocs != 0 {
		t.Errorf("notify round trip allocates %v times", allocs)
	}
}

// BenchmarkNotifyRoundTrip measures a doorbell ping-pong between a
// frontend goroutine and a backend goroutine.
func BenchmarkNotifyRoundTrip(b *testing.B) {
	x := newXen(b)
	front, back, fp, bp := connect(b, x)
	go func() {
		for {
			p, err := back.Wait()
			if err != nil {
				return
			}
			back.Unmask(p)
			back.Notify(bp)
		}
	}()
	b.ReportAllocs()
	for b.Loop() {
		front.Notify(fp)
		if _, err := front.Wait(); err != nil {
			b.Fatal(err)
		}
		front.Unmask(fp)
	}
	back.Close()
}
