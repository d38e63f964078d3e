package blkback_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/xensim"
	"blkdom/xensim/testbed"
)

// isOpen reports whether this process has path open.
func isOpen(t *testing.T, path string) bool {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && target == path {
			return true
		}
	}
	return false
}

// waitBackendState polls the backend's state key until it is want.
func waitBackendState(t *testing.T, bed *testbed.Bed, d xensim.Disk, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, _ := bed.Dom0.Read(d.BackendPath() + "/state")
		if v == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend state %q, want %q", v, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The invariant that makes the page cache safe for live migration (README,
// Cache policy): the image is not open before the frontend has finished its
// handshake, and is closed before the backend says Closed.
func TestImageOpenOnlyWhileConnected(t *testing.T) {
	bed := newBed(t)
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	f, err := bed.Attach(d, blkfront.Options{})
	if err != nil {
		t.Fatal(err)
	}
	waitBackendState(t, bed, d, "2")
	time.Sleep(50 * time.Millisecond) // give a wrong backend time to open it
	if isOpen(t, path) {
		t.Fatal("image open at InitWait, before the frontend's handshake")
	}
	// Watch the backend's state: the moment it reads Closed, the image
	// must already be closed.
	openAtClosed := make(chan bool, 8)
	w, err := bed.Dom0.Watch(d.BackendPath()+"/state", "test", func(string) {
		if v, _ := bed.Dom0.Read(d.BackendPath() + "/state"); v == "6" {
			openAtClosed <- isOpen(t, path)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if !isOpen(t, path) {
		t.Fatal("image not open while connected")
	}
	do(t, f, blkif.OpWrite, 0, make([]byte, 4096))
	closeFrontend(t, f)
	select {
	case open := <-openAtClosed:
		if open {
			t.Fatal("image still open when the backend wrote Closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no Closed state seen")
	}
	if isOpen(t, path) {
		t.Fatal("image open after Closed")
	}
}

// A frontend that closes and comes back (driver reload, migration) gets
// the device again, with the data it wrote before.
func TestReconnect(t *testing.T) {
	bed := newBed(t)
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	f := connect(t, bed, d, blkfront.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for round := range 3 {
		data := bytes.Repeat([]byte{byte(round + 1)}, 8192)
		do(t, f, blkif.OpWrite, uint64(round*16), data)
		closeFrontend(t, f)
		waitBackendState(t, bed, d, "6")
		if err := f.Reinitialise(); err != nil {
			t.Fatal(err)
		}
		if err := f.Connect(ctx); err != nil {
			t.Fatalf("reconnect %d: %v", round, err)
		}
		got := make([]byte, 8192)
		do(t, f, blkif.OpRead, uint64(round*16), got)
		if !bytes.Equal(got, data) {
			t.Fatalf("round %d: data written before the reconnect is gone", round)
		}
	}
	closeFrontend(t, f)
}

func TestReadOnlyRefusesWrites(t *testing.T) {
	bed := newBed(t)
	path, want := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path, ReadOnly: true}
	f := connect(t, bed, d, blkfront.Options{})
	if f.Disk.Info&blkif.InfoReadOnly == 0 {
		t.Errorf("info %d lacks the read-only bit", f.Disk.Info)
	}
	for _, op := range []uint8{blkif.OpWrite, blkif.OpWriteBarrier, blkif.OpFlushDiskcache} {
		if st, err := f.Do(op, 0, make([]byte, 4096)); err != nil || st != blkif.StatusError {
			t.Errorf("op %d with data on a read-only disk: status %d, %v; want %d", op, st, err, blkif.StatusError)
		}
	}
	buf := make([]byte, 4096)
	do(t, f, blkif.OpRead, 0, buf)
	if !bytes.Equal(buf, want[:4096]) {
		t.Error("read-only disk reads wrong data")
	}
	closeFrontend(t, f)
	if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
		t.Error("read-only image changed")
	}
}

// Several guests at once, each with many requests in flight on its own
// image; each sees only its own data.
func TestSeveralDevicesAtOnce(t *testing.T) {
	bed := newBed(t)
	const guests, depth, size = 3, 8, 2 << 20
	var wg sync.WaitGroup
	errs := make(chan error, guests*depth)
	for g := range guests {
		path, _ := newImage(t, size)
		f := connect(t, bed, xensim.Disk{Frontend: uint32(g + 1), Devid: 51712 + 16*g, Params: path}, blkfront.Options{})
		for w := range depth {
			wg.Add(1)
			go func() {
				defer wg.Done()
				stripe := size / depth
				buf := make([]byte, 16384)
				got := make([]byte, len(buf))
				for i := range 50 {
					sector := uint64((w*stripe + i*len(buf)%stripe) / 512)
					copy(buf, fmt.Sprintf("guest %d worker %d write %d", g, w, i))
					if st, err := f.Do(blkif.OpWrite, sector, buf); err != nil || st != 0 {
						errs <- fmt.Errorf("guest %d write: %d %v", g, st, err)
						return
					}
					if st, err := f.Do(blkif.OpRead, sector, got); err != nil || st != 0 || !bytes.Equal(got, buf) {
						errs <- fmt.Errorf("guest %d sector %d: read back %q, status %d, %v", g, sector, got[:32], st, err)
						return
					}
				}
			}()
		}
		t.Cleanup(func() { closeFrontend(t, f) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// The toolstack detaches a disk (xl block-detach, xl destroy): the backend
// closes even though the frontend never says so.
func TestToolstackDetachAndGuestDestroy(t *testing.T) {
	bed := newBed(t)
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	f := connect(t, bed, d, blkfront.Options{})
	do(t, f, blkif.OpWrite, 0, make([]byte, 4096))
	// The guest dies: its directory goes, then libxl asks the backend to close.
	if err := bed.Dom0.Rm("/local/domain/1"); err != nil {
		t.Fatal(err)
	}
	if err := xensim.DetachDisk(bed.Dom0, d); err != nil {
		t.Fatal(err)
	}
	waitBackendState(t, bed, d, "6")
	if isOpen(t, path) {
		t.Fatal("image open after the backend closed")
	}
	if err := bed.Dom0.Rm(d.BackendPath()); err != nil {
		t.Fatal(err)
	}
}

// A toolstack's Closing that lands after the backend has already closed
// (libxl 4.17 skips it when it reads Closed in its transaction, but an
// older one or a race with another writer does not) is answered by
// writing Closed again: the toolstack waits for Closed.
func TestLateClosingAfterClosed(t *testing.T) {
	bed := newBed(t)
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	f := connect(t, bed, d, blkfront.Options{})
	do(t, f, blkif.OpWrite, 0, make([]byte, 4096))
	if err := bed.Dom0.Rm("/local/domain/1"); err != nil {
		t.Fatal(err)
	}
	waitBackendState(t, bed, d, "6")
	if err := bed.Dom0.Write(d.BackendPath()+"/online", "0"); err != nil {
		t.Fatal(err)
	}
	if err := bed.Dom0.Write(d.BackendPath()+"/state", "5"); err != nil {
		t.Fatal(err)
	}
	waitBackendState(t, bed, d, "6")
}

// In a driver domain, blkdom stands in for xl devd: once a detached
// device is Closed, it removes the backend directory, which the toolstack
// in dom0 waits for. Attaching it again works.
func TestDriverDomainRemovesDetachedDevice(t *testing.T) {
	dd := uint32(5)
	bed := newBedWith(t, blkback.Options{Domain: &dd})
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Backend: dd, Frontend: 1, Devid: 51712, Params: path}
	f := connect(t, bed, d, blkfront.Options{})
	do(t, f, blkif.OpWrite, 0, make([]byte, 4096))
	// xl block-detach: online=0 and Closing; blkfront answers by closing;
	// libxl waits for Closed (it must be able to read it), then for the
	// backend's directory to go, then removes the frontend's.
	if err := xensim.DetachDisk(bed.Dom0, d); err != nil {
		t.Fatal(err)
	}
	closeFrontend(t, f)
	waitBackendState(t, bed, d, "6")
	time.Sleep(50 * time.Millisecond)
	if _, err := bed.Dom0.Read(d.BackendPath() + "/state"); err != nil {
		t.Fatalf("backend directory gone right after Closed, before libxl could read it: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := bed.Dom0.Read(d.BackendPath() + "/state"); errors.Is(err, syscall.ENOENT) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("backend directory not removed after detach")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if isOpen(t, path) {
		t.Error("image open after detach")
	}
	if err := bed.Dom0.Rm(d.FrontendPath()); err != nil {
		t.Fatal(err)
	}
	g := connect(t, bed, d, blkfront.Options{})
	do(t, g, blkif.OpRead, 0, make([]byte, 4096))
	closeFrontend(t, g)
}

// A disk that cannot be connected says why where Linux's xenbus does
// (error/<backend path>/error under the backend domain's home, "<errno>
// <message>"), and goes Closing; once the image is there and the guest
// connects again, the node goes.
func TestConnectFailureReportedInXenstore(t *testing.T) {
	bed := newBed(t)
	path := filepath.Join(t.TempDir(), "missing.img")
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	f, err := bed.Attach(d, blkfront.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// blkfront waits for Connected until its timeout; the backend is
	// Closing long before.
	short, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := f.Connect(short); err == nil {
		t.Fatal("connected to a missing image")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	node := "/local/domain/0/error/backend/vbd/1/51712/error"
	v, err := bed.Dom0.Read(node)
	if err != nil {
		t.Fatalf("error node: %v", err)
	}
	if want := fmt.Sprintf("%d connecting: image %s: ", syscall.ENOENT, path); !strings.HasPrefix(v, want) {
		t.Errorf("error node %q, want it to start with %q", v, want)
	}
	waitBackendState(t, bed, d, "5")
	// The image appears; the guest closes and connects again.
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.Reinitialise(); err != nil {
		t.Fatal(err)
	}
	if err := f.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if v, err := bed.Dom0.Read(node); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("error node %q (%v) after connecting", v, err)
	}
	do(t, f, blkif.OpRead, 0, make([]byte, 4096))
	closeFrontend(t, f)
}

// A new device's features go out with its first reads. When the toolstack
// removes its directory at that moment, those writes make it again with
// nothing but features in it; blkdom removes such a directory instead of
// waiting for the toolstack's keys forever.
func TestFeaturesOfARemovedDeviceGo(t *testing.T) {
	bed := newBed(t)
	d := xensim.Disk{Frontend: 1, Devid: 51712}
	// What the race leaves: the features, no toolstack key.
	if err := bed.Dom0.Write(d.BackendPath()+"/max-ring-page-order", "4"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := bed.Dom0.Directory(d.BackendPath())
		if errors.Is(err, syscall.ENOENT) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a directory of features only is still there (%v)", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A directory where the toolstack's keys are coming is left alone.
	if err := bed.Dom0.Write(d.BackendPath()+"/frontend", d.FrontendPath()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := bed.Dom0.Read(d.BackendPath() + "/frontend"); err != nil {
		t.Fatalf("the toolstack's half-written directory was touched: %v", err)
	}
}
