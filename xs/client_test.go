package xs_test

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"blkdom/xensim/xenstored"
	"blkdom/xensim/xenstored/xenstoredtest"
	"blkdom/xs"
)

// newServer starts a xenstored on a socket in a temporary directory and
// returns it with a reconnecting dom0 client.
func newServer(t *testing.T) (*xenstored.Server, string, *xs.Client) {
	t.Helper()
	return xenstoredtest.Start(t)
}

// dialAs returns a non-reconnecting client of s connected as domain dom.
func dialAs(t *testing.T, s *xenstored.Server, dom uint32) *xs.Client {
	t.Helper()
	nc, err := s.DialAs(dom)
	if err != nil {
		t.Fatal(err)
	}
	c := xs.NewClient(nc)
	t.Cleanup(func() { c.Close() })
	return c
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestClientOps(t *testing.T) {
	_, _, c := newServer(t)
	big := strings.Repeat("v", xs.MaxPayload)
	tests := []struct {
		name string
		do   func() (any, error)
		want any
		err  error
	}{
		{"write", func() (any, error) { return nil, c.Write("/t/a/b", "hello") }, nil, nil},
		{"read", func() (any, error) { return c.Read("/t/a/b") }, "hello", nil},
		{"read parent made by write", func() (any, error) { return c.Read("/t/a") }, "", nil},
		{"read missing", func() (any, error) { return c.Read("/t/nope") }, nil, fs.ErrNotExist},
		{"write binary", func() (any, error) { return nil, c.Write("/t/bin", "a\x00b\xff") }, nil, nil},
		{"read binary", func() (any, error) { return c.Read("/t/bin") }, "a\x00b\xff", nil},
		{"mkdir", func() (any, error) { return nil, c.Mkdir("/t/dir/sub") }, nil, nil},
		{"mkdir existing", func() (any, error) { return nil, c.Mkdir("/t/a/b") }, nil, nil},
		{"mkdir keeps value", func() (any, error) { return c.Read("/t/a/b") }, "hello", nil},
		{"directory", func() (any, error) { return c.Directory("/t") }, []string{"a", "bin", "dir"}, nil},
		{"directory leaf", func() (any, error) { return c.Directory("/t/a/b") }, []string(nil), nil},
		{"directory missing", func() (any, error) { return c.Directory("/t/zz") }, nil, syscall.ENOENT},
		{"rm subtree", func() (any, error) { return nil, c.Rm("/t/dir") }, nil, nil},
		{"rm gone", func() (any, error) { return c.Read("/t/dir/sub") }, nil, syscall.ENOENT},
		{"rm missing child", func() (any, error) { return nil, c.Rm("/t/dir") }, nil, nil},
		{"rm missing parent", func() (any, error) { return nil, c.Rm("/t/x/y") }, nil, syscall.ENOENT},
		{"rm root", func() (any, error) { return nil, c.Rm("/") }, nil, syscall.EINVAL},
		{"bad path", func() (any, error) { return c.Read("/t//a") }, nil, syscall.EINVAL},
		{"bad char", func() (any, error) { return nil, c.Write("/t/a b", "") }, nil, syscall.EINVAL},
		{"trailing slash", func() (any, error) { return c.Read("/t/") }, nil, syscall.EINVAL},
		{"relative", func() (any, error) { return nil, c.Write("name", "Domain-0") }, nil, nil},
		{"relative resolved", func() (any, error) { return c.Read("/local/domain/0/name") }, "Domain-0", nil},
		{"value too big", func() (any, error) { return nil, c.Write("/t/big", big) }, nil, syscall.E2BIG},
		{"set perms", func() (any, error) {
			return nil, c.SetPerms("/t/a", []xs.Perm{{Dom: 3, Access: xs.AccessNone}, {Dom: 5, Access: xs.AccessRead}})
		}, nil, nil},
		{"get perms", func() (any, error) { return c.GetPerms("/t/a") },
			[]xs.Perm{{Dom: 3, Access: xs.AccessNone}, {Dom: 5, Access: xs.AccessRead}}, nil},
		{"inherited perms", func() (any, error) { return c.GetPerms("/t/a/b") }, []xs.Perm{{Dom: 0, Access: xs.AccessNone}}, nil},
		{"new child inherits", func() (any, error) {
			if err := c.Write("/t/a/c", "1"); err != nil {
				return nil, err
			}
			return c.GetPerms("/t/a/c")
		}, []xs.Perm{{Dom: 3, Access: xs.AccessNone}, {Dom: 5, Access: xs.AccessRead}}, nil},
		{"set perms empty", func() (any, error) { return nil, c.SetPerms("/t/a", nil) }, nil, syscall.EINVAL},
		{"get domain path", func() (any, error) { return c.GetDomainPath(7) }, "/local/domain/7", nil},
	}
	for _, tt := range tests {
		got, err := tt.do()
		if tt.err != nil {
			var xe *xs.Error
			if !errors.Is(err, tt.err) || !errors.As(err, &xe) {
				t.Errorf("%s: err = %v, want %v", tt.name, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestDirectoryPart(t *testing.T) {
	_, _, c := newServer(t)
	// 400 names of ~20 bytes: too big for one DIRECTORY reply.
	var want []string
	must(t, c.Transaction(func(tx *xs.Tx) error {
		want = want[:0]
		for i := range 400 {
			name := fmt.Sprintf("child-%014d", i)
			want = append(want, name)
			if err := tx.Write("/big/"+name, ""); err != nil {
				return err
			}
		}
		return nil
	}))
	got, err := c.Directory("/big")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %d names (%v...), want %d", len(got), got[:min(3, len(got))], len(want))
	}
}

func TestConcurrentClients(t *testing.T) {
	_, _, c := newServer(t)
	const workers, rounds = 32, 50
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				p := fmt.Sprintf("/conc/%d/%d", w, i)
				v := fmt.Sprintf("%d-%d", w, i)
				if err := c.Write(p, v); err != nil {
					errs <- err
					return
				}
				got, err := c.Read(p)
				if err != nil || got != v {
					errs <- fmt.Errorf("read %s = %q, %v", p, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for w := range workers {
		names, err := c.Directory(fmt.Sprintf("/conc/%d", w))
		if err != nil || len(names) != rounds {
			t.Fatalf("worker %d: %d names, %v", w, len(names), err)
		}
	}
}

func TestTransactionConflict(t *testing.T) {
	s, _, c := newServer(t)
	other := dialAs(t, s, 0)
	must(t, c.Write("/x", "1"))

	tx, err := c.StartTransaction()
	must(t, err)
	if v, err := tx.Read("/x"); err != nil || v != "1" {
		t.Fatalf("tx read %q %v", v, err)
	}
	must(t, other.Write("/x", "2"))
	if v, _ := tx.Read("/x"); v != "1" {
		t.Fatalf("transaction snapshot saw %q", v)
	}
	must(t, tx.Write("/y", "from tx"))
	if _, err := c.Read("/y"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("uncommitted write visible: %v", err)
	}
	if err := tx.Commit(); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("commit after conflict: %v", err)
	}
	if _, err := c.Read("/y"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("failed commit applied: %v", err)
	}
	if err := tx.Write("/z", ""); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("write after end: %v", err)
	}

	// Without conflict the commit applies everything.
	tx, err = c.StartTransaction()
	must(t, err)
	must(t, tx.Write("/y", "ok"))
	must(t, tx.Rm("/x"))
	must(t, tx.Commit())
	if v, _ := c.Read("/y"); v != "ok" {
		t.Fatalf("/y = %q", v)
	}
	if _, err := c.Read("/x"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("/x after rm in tx: %v", err)
	}

	// Abort discards.
	tx, err = c.StartTransaction()
	must(t, err)
	must(t, tx.Write("/y", "aborted"))
	must(t, tx.Abort())
	if v, _ := c.Read("/y"); v != "ok" {
		t.Fatalf("/y after abort = %q", v)
	}
}

func TestTransactionRetry(t *testing.T) {
	_, _, c := newServer(t)
	must(t, c.Write("/counter", "0"))
	const workers, incs = 8, 20
	var attempts atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range incs {
				err := c.Transaction(func(tx *xs.Tx) error {
					attempts.Add(1)
					v, err := tx.Read("/counter")
					if err != nil {
						return err
					}
					n, _ := strconv.Atoi(v)
					return tx.Write("/counter", strconv.Itoa(n+1))
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if v, _ := c.Read("/counter"); v != strconv.Itoa(workers*incs) {
		t.Fatalf("counter = %s, want %d (lost updates)", v, workers*incs)
	}
	t.Logf("%d attempts for %d increments", attempts.Load(), workers*incs)

	// fn's own error aborts and is returned as is.
	boom := errors.New("boom")
	err := c.Transaction(func(tx *xs.Tx) error {
		if err := tx.Write("/counter", "junk"); err != nil {
			return err
		}
		return boom
	})
	if err != boom {
		t.Fatalf("Transaction returned %v", err)
	}
	if v, _ := c.Read("/counter"); v != strconv.Itoa(workers*incs) {
		t.Fatalf("aborted write applied: %s", v)
	}
}

func TestPermissions(t *testing.T) {
	s, _, dom0 := newServer(t)
	must(t, dom0.Write("/local/domain/0/backend/vbd/5/768/state", "1"))
	must(t, dom0.SetPerms("/local/domain/0/backend/vbd/5/768/state", []xs.Perm{{Dom: 0, Access: xs.AccessNone}}))
	must(t, dom0.Write("/local/domain/0/backend/vbd/5/768/params", "disk.img"))
	must(t, dom0.SetPerms("/local/domain/0/backend/vbd/5/768/params", []xs.Perm{{Dom: 0, Access: xs.AccessNone}, {Dom: 5, Access: xs.AccessRead}}))
	must(t, dom0.Mkdir("/local/domain/5"))
	must(t, dom0.SetPerms("/local/domain/5", []xs.Perm{{Dom: 5, Access: xs.AccessNone}, {Dom: 0, Access: xs.AccessRead}}))

	fe := dialAs(t, s, 5)
	other := dialAs(t, s, 6)
	tests := []struct {
		name string
		err  error
		do   func() error
	}{
		{"domU cannot write n0 node", syscall.EACCES, func() error { return fe.Write("/local/domain/0/backend/vbd/5/768/state", "4") }},
		{"domU cannot read n0 node", syscall.EACCES, func() error { _, err := fe.Read("/local/domain/0/backend/vbd/5/768/state"); return err }},
		{"domU reads when granted r", nil, func() error {
			v, err := fe.Read("/local/domain/0/backend/vbd/5/768/params")
			if err == nil && v != "disk.img" {
				err = fmt.Errorf("read %q", v)
			}
			return err
		}},
		{"granted r is not w", syscall.EACCES, func() error { return fe.Write("/local/domain/0/backend/vbd/5/768/params", "x") }},
		{"other domain uses default n", syscall.EACCES, func() error { _, err := other.Read("/local/domain/0/backend/vbd/5/768/params"); return err }},
		{"no create under unwritable parent", syscall.EACCES, func() error { return fe.Write("/local/domain/0/backend/evil", "x") }},
		{"absence hidden under unreadable parent", syscall.EACCES, func() error { _, err := fe.Read("/local/domain/0/nothing/here"); return err }},
		{"cannot remove backend node", syscall.EACCES, func() error { return fe.Rm("/local/domain/0/backend") }},
		{"owner writes its home", nil, func() error { return fe.Write("device/vbd/768/state", "1") }},
		{"relative path resolved", nil, func() error {
			v, err := dom0.Read("/local/domain/5/device/vbd/768/state")
			if err == nil && v != "1" {
				err = fmt.Errorf("read %q", v)
			}
			return err
		}},
		{"domU owns what it creates", nil, func() error {
			p, err := dom0.GetPerms("/local/domain/5/device/vbd/768/state")
			if err == nil && !slices.Equal(p, []xs.Perm{{Dom: 5, Access: xs.AccessNone}, {Dom: 0, Access: xs.AccessRead}}) {
				err = fmt.Errorf("perms %v", p)
			}
			return err
		}},
		{"owner may grant", nil, func() error {
			return fe.SetPerms("device/vbd/768/state", []xs.Perm{{Dom: 5, Access: xs.AccessNone}, {Dom: 0, Access: xs.AccessBoth}})
		}},
		{"owner may not give away", syscall.EPERM, func() error {
			return fe.SetPerms("device/vbd/768/state", []xs.Perm{{Dom: 0, Access: xs.AccessNone}})
		}},
		{"dom0 writes where granted nothing", nil, func() error { return dom0.Write("/local/domain/5/device/vbd/768/state", "2") }},
		{"non-owner may not set perms", syscall.EACCES, func() error {
			return other.SetPerms("/local/domain/0/backend/vbd/5/768/params", []xs.Perm{{Dom: 6, Access: xs.AccessBoth}})
		}},
		{"domU cannot create in another home", syscall.EACCES, func() error { return fe.Write("/local/domain/6/x", "") }},
	}
	for _, tt := range tests {
		err := tt.do()
		if tt.err == nil && err != nil || tt.err != nil && !errors.Is(err, tt.err) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.err)
		}
	}
}

// recorder collects watch events.
type recorder struct {
	mu     sync.Mutex
	events []string
	ch     chan string
}

func newRecorder() *recorder { return &recorder{ch: make(chan string, 1024)} }

func (r *recorder) fn(p string) {
	r.mu.Lock()
	r.events = append(r.events, p)
	r.mu.Unlock()
	r.ch <- p
}

// expect waits for an event for path, skipping others.
func (r *recorder) expect(t *testing.T, path string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case p := <-r.ch:
			if p == path {
				return
			}
		case <-timeout:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("no event for %s; got %q", path, r.events)
		}
	}
}

// quiet checks that no event arrives for a while.
func (r *recorder) quiet(t *testing.T) {
	t.Helper()
	select {
	case p := <-r.ch:
		t.Fatalf("unexpected event %q", p)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestWatch(t *testing.T) {
	s, _, c := newServer(t)
	must(t, c.Write("/w/a/state", "1"))
	ra, rb := newRecorder(), newRecorder()
	wa, err := c.Watch("/w/a", "a", ra.fn)
	must(t, err)
	wb, err := c.Watch("/w/b", "b", rb.fn)
	must(t, err)
	ra.expect(t, "/w/a") // fired at registration
	rb.expect(t, "/w/b")
	if _, err := c.Watch("/w/c", "a", func(string) {}); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("duplicate token: %v", err)
	}

	must(t, c.Write("/w/a/state", "2")) // child change
	ra.expect(t, "/w/a/state")
	must(t, c.Write("/w/b", "x")) // token dispatch: only b hears it
	rb.expect(t, "/w/b")
	ra.quiet(t)

	// A watch below a removed node fires with its own path.
	rs := newRecorder()
	ws, err := c.Watch("/w/a/state", "state", rs.fn)
	must(t, err)
	rs.expect(t, "/w/a/state")
	must(t, c.Rm("/w"))
	ra.expect(t, "/w/a")
	rs.expect(t, "/w/a/state")
	rb.expect(t, "/w/b")
	must(t, ws.Close())

	// Events of a transaction fire at commit.
	must(t, c.Transaction(func(tx *xs.Tx) error { return tx.Write("/w/a/x", "1") }))
	ra.expect(t, "/w/a/x")

	// A domU watching a node it may not read hears nothing.
	must(t, c.Mkdir("/local/domain/5"))
	must(t, c.SetPerms("/local/domain/5", []xs.Perm{{Dom: 5, Access: xs.AccessNone}}))
	fe := dialAs(t, s, 5)
	rf := newRecorder()
	_, err = fe.Watch("/w", "fe", rf.fn)
	must(t, err)
	rf.expect(t, "/w")
	must(t, c.Write("/w/secret", "x"))
	rf.quiet(t)
	// Relative watches report relative paths.
	rr := newRecorder()
	_, err = fe.Watch("device", "rel", rr.fn)
	must(t, err)
	rr.expect(t, "device")
	must(t, c.Write("/local/domain/5/device/vbd", ""))
	rr.expect(t, "device/vbd")

	// After Close, fn is not called again.
	must(t, wa.Close())
	must(t, c.Write("/w/a/y", "1"))
	ra.quiet(t)
	must(t, wb.Close())
	if err := wb.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestWatchCloseFromCallback(t *testing.T) {
	_, _, c := newServer(t)
	var w *xs.Watch
	var calls atomic.Int32
	closed := make(chan error, 1)
	ready := make(chan struct{})
	var err error
	w, err = c.Watch("/cb", "cb", func(string) {
		<-ready
		if calls.Add(1) == 1 {
			closed <- w.CloseFromCallback()
		}
	})
	must(t, err)
	close(ready)
	select {
	case err := <-closed:
		must(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Close from the callback deadlocked")
	}
	must(t, c.Write("/cb", "x"))
	time.Sleep(50 * time.Millisecond)
	if n := calls.Load(); n != 1 {
		t.Fatalf("fn called %d times", n)
	}
}

// Close from another goroutine waits for a running callback to return.
func TestWatchCloseWaitsForCallback(t *testing.T) {
	_, _, c := newServer(t)
	entered, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	var returned atomic.Bool
	w, err := c.Watch("/cw", "cw", func(string) {
		if calls.Add(1) == 1 {
			entered <- struct{}{}
			<-release
			returned.Store(true)
		}
	})
	must(t, err)
	<-entered // the registration's event is being delivered
	closed := make(chan error, 1)
	go func() { closed <- w.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned while the callback ran")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	must(t, <-closed)
	if !returned.Load() {
		t.Fatal("Close returned before the callback")
	}
}

func TestWatchQueueBounded(t *testing.T) {
	_, _, c := newServer(t)
	release := make(chan struct{})
	var mu sync.Mutex
	var got []string
	w, err := c.Watch("/q", "q", func(p string) {
		<-release
		mu.Lock()
		got = append(got, p)
		mu.Unlock()
	})
	must(t, err)
	defer w.Close()
	// fn is blocked on the registration event; queue many distinct paths,
	// each twice (duplicates merge).
	const n = 1000
	for i := range n {
		must(t, c.Write(fmt.Sprintf("/q/%d", i), "x"))
		must(t, c.Write(fmt.Sprintf("/q/%d", i), "y"))
	}
	must(t, c.Write("/q/last", "x"))
	time.Sleep(100 * time.Millisecond) // let the events arrive
	close(release)
	// Wait until delivery is quiet.
	for last := -1; ; {
		time.Sleep(100 * time.Millisecond)
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == last {
			break
		}
		last = n
	}
	mu.Lock()
	defer mu.Unlock()
	rescans := 0
	for _, p := range got {
		if p == "/q" {
			rescans++
		} else if !strings.HasPrefix(p, "/q/") {
			t.Fatalf("event %q", p)
		}
	}
	if len(got) > 2+2*256 || rescans < 2 {
		t.Fatalf("%d events, %d for /q: queue not bounded or overflow not reported", len(got), rescans)
	}
	if last := got[len(got)-1]; last != "/q" && last != "/q/last" {
		t.Fatalf("last event %q does not cover the last change", last)
	}
}

func TestReconnect(t *testing.T) {
	s, sock, c := newServer(t)
	must(t, c.Write("/r/a", "1"))
	rec := newRecorder()
	_, err := c.Watch("/r", "r", rec.fn)
	must(t, err)
	rec.expect(t, "/r")
	tx, err := c.StartTransaction()
	must(t, err)
	must(t, tx.Write("/r/tx", "1"))

	s.Restart()
	rec.expect(t, "/r") // re-registered, fired once
	if v, err := c.Read("/r/a"); err != nil || v != "1" {
		t.Fatalf("read after restart: %q %v", v, err)
	}
	if err := tx.Write("/r/tx", "2"); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("old transaction write: %v", err)
	}
	if err := tx.Commit(); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("old transaction commit: %v", err)
	}
	other, err := xs.Dial(sock)
	must(t, err)
	defer other.Close()
	must(t, other.Write("/r/b", "2"))
	rec.expect(t, "/r/b")

	// A restart in the middle of Transaction's fn makes it redo fn.
	attempts := 0
	must(t, c.Transaction(func(tx *xs.Tx) error {
		attempts++
		if attempts == 1 {
			s.Restart()
		}
		return tx.Write("/r/c", strconv.Itoa(attempts))
	}))
	if v, _ := c.Read("/r/c"); attempts != 2 || v != "2" {
		t.Fatalf("%d attempts, /r/c = %q", attempts, v)
	}
}

func TestReconnectUnderLoad(t *testing.T) {
	s, _, c := newServer(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p := fmt.Sprintf("/load/%d", w)
				if err := c.Write(p, strconv.Itoa(i)); err != nil {
					errs <- err
					return
				}
				if v, err := c.Read(p); err != nil || v != strconv.Itoa(i) {
					errs <- fmt.Errorf("read %s = %q, %v", p, v, err)
					return
				}
			}
		}()
	}
	for range 5 {
		time.Sleep(40 * time.Millisecond)
		s.Restart()
	}
	time.Sleep(40 * time.Millisecond)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestNoReconnect(t *testing.T) {
	s, _, _ := newServer(t)
	c := dialAs(t, s, 0)
	must(t, c.Write("/n", "1"))
	s.Restart()
	done := make(chan error, 1)
	go func() { _, err := c.Read("/n"); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("read on a dropped connection succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read on a dropped connection hangs")
	}
}

func TestCloseWhileWaiting(t *testing.T) {
	s, _, c := newServer(t)
	must(t, c.Write("/x", "1"))
	s.Close() // the client now redials in vain
	done := make(chan error, 1)
	go func() { _, err := c.Read("/x"); done <- err }()
	time.Sleep(50 * time.Millisecond)
	must(t, c.Close())
	select {
	case err := <-done:
		if !errors.Is(err, xs.ErrClosed) {
			t.Fatalf("err = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not release a waiting call")
	}
	if _, err := c.Read("/x"); !errors.Is(err, xs.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

// echoPeer answers every request with a fixed reply and allocates nothing,
// so that allocation counts measure the client alone.
func echoPeer(conn net.Conn) {
	buf := make([]byte, xs.MaxPayload)
	ok, value := []byte("OK\x00"), []byte("value")
	for {
		h, _, err := xs.ReadMessage(conn, buf)
		if err != nil {
			return
		}
		reply := ok
		if h.Op == xs.OpRead {
			reply = value
		}
		if xs.WriteMessage(conn, xs.Header{Op: h.Op, ReqID: h.ReqID, TxID: h.TxID}, reply) != nil {
			return
		}
	}
}

func TestClientAllocs(t *testing.T) {
	a, b := net.Pipe()
	go echoPeer(b)
	c := xs.NewClient(a)
	defer c.Close()
	if n := testing.AllocsPerRun(200, func() { must(t, c.Write("/a/b", "v")) }); n != 0 {
		t.Errorf("Write: %v allocations", n)
	}
	if n := testing.AllocsPerRun(200, func() { must(t, c.Mkdir("/a/b")) }); n != 0 {
		t.Errorf("Mkdir: %v allocations", n)
	}
	if n := testing.AllocsPerRun(200, func() { must(t, c.Rm("/a/b")) }); n != 0 {
		t.Errorf("Rm: %v allocations", n)
	}
	perms := []xs.Perm{{Dom: 0, Access: xs.AccessNone}, {Dom: 5, Access: xs.AccessRead}}
	if n := testing.AllocsPerRun(200, func() { must(t, c.SetPerms("/a/b", perms)) }); n != 0 {
		t.Errorf("SetPerms: %v allocations", n)
	}
	// Read allocates only the returned string.
	if n := testing.AllocsPerRun(200, func() {
		if v, err := c.Read("/a/b"); err != nil || v != "value" {
			t.Fatal(v, err)
		}
	}); n > 1 {
		t.Errorf("Read: %v allocations", n)
	}
}

func BenchmarkClientWrite(b *testing.B) {
	s := xenstored.New()
	defer s.Close()
	nc, err := s.DialAs(0)
	if err != nil {
		b.Fatal(err)
	}
	c := xs.NewClient(nc)
	defer c.Close()
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Write("/bench/node", "value"); err != nil {
			b.Fatal(err)
		}
	}
}

func TestOpenUsesXenstoredPath(t *testing.T) {
	_, sock, c := newServer(t)
	must(t, c.Write("/open", "yes"))
	t.Setenv("XENSTORED_PATH", sock)
	o, err := xs.Open()
	must(t, err)
	defer o.Close()
	if v, err := o.Read("/open"); err != nil || v != "yes" {
		t.Fatalf("read through Open: %q %v", v, err)
	}
}

func TestCloseStopsGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	s := xenstored.New()
	sock := filepath.Join(t.TempDir(), "socket")
	must(t, s.Listen(sock))
	c, err := xs.Dial(sock)
	must(t, err)
	for i := range 5 {
		_, err := c.Watch(fmt.Sprintf("/g/%d", i), strconv.Itoa(i), func(string) {})
		must(t, err)
	}
	s.Restart() // exercise a reconnect too
	must(t, c.Write("/g/0/x", "1"))
	must(t, c.Close())
	must(t, s.Close())
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
	}
}

func TestRestartStorm(t *testing.T) {
	s, _, c := newServer(t)
	rec := newRecorder()
	for i := range 50 {
		_, err := c.Watch(fmt.Sprintf("/storm/%d", i), "storm"+strconv.Itoa(i), rec.fn)
		must(t, err)
	}
	for range 20 { // restarts land during watch re-registration
		s.Restart()
		time.Sleep(time.Millisecond)
	}
	wrote := make(chan error, 1)
	go func() { wrote <- c.Write("/storm/7/x", "1") }()
	select {
	case err := <-wrote:
		must(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Write hangs after restarts during re-registration")
	}
	rec.expect(t, "/storm/7/x")
	s.Restart()
	done := make(chan error)
	go func() { done <- c.Close() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs during a reconnect")
	}
}
