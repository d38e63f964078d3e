package blkback_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/xensim"
	"blkdom/xensim/testbed"
)

// usage is what the process and the backend's domain hold.
type usage struct {
	fds, goroutines int
	xen             xensim.Census
	heap            uint64
}

func (u usage) String() string {
	return fmt.Sprintf("%d fds, %d goroutines, %d grant handles, %d event handles, %d mappings, %d ports, %d KiB heap",
		u.fds, u.goroutines, u.xen.GrantHandles, u.xen.EventHandles, u.xen.Mappings, u.xen.Ports, u.heap>>10)
}

func measure(t *testing.T, bed *testbed.Bed) usage {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return usage{fds: len(fds), goroutines: runtime.NumGoroutine(), xen: bed.Xen.Domain(0).Census(), heap: ms.HeapAlloc}
}

// settled measures once the backend is quiet: the same usage counts in
// five measurements 20 ms apart (at most 2 s), so that a goroutine still
// finishing the cycle's last step does not count in the baseline.
func settled(t *testing.T, bed *testbed.Bed) usage {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	u := measure(t, bed)
	for same := 1; same < 5 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		next := measure(t, bed)
		if next.fds == u.fds && next.goroutines == u.goroutines && next.xen == u.xen {
			same++
		} else {
			same = 1
		}
		u = next
	}
	return u
}

// flat compares the usage after the last cycle with that after the tenth:
// the counts equal (goroutines given a moment to finish), the heap within
// slack.
func flat(t *testing.T, bed *testbed.Bed, base usage, slack uint64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		end := measure(t, bed)
		same := end.fds == base.fds && end.goroutines == base.goroutines && end.xen == base.xen
		if same && end.heap <= base.heap+slack {
			t.Logf("after the 10th cycle: %v", base)
			t.Logf("after the last:       %v", end)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage grew:\n after the 10th cycle: %v\n after the last:       %v", base, end)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// quietBed is a machine whose backend logs nothing: a thousand cycles'
// log would weigh on the heap being measured.
func quietBed(t *testing.T) *testbed.Bed {
	t.Helper()
	bed, err := testbed.New(t.TempDir(), blkback.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bed.Close() })
	return bed
}

// A thousand connect/disconnect cycles of one device (with a write and a
// read each) leave fds, goroutines, grant handles, mappings, ports and
// heap where they were after the tenth.
func TestConnectCyclesStayFlat(t *testing.T) {
	cycles := 1000
	if testing.Short() {
		cycles = 50
	}
	bed := quietBed(t)
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	f := connect(t, bed, d, blkfront.Options{})
	buf := make([]byte, 4096)
	var base usage
	for i := 1; i <= cycles; i++ {
		do(t, f, blkif.OpWrite, 8, buf)
		do(t, f, blkif.OpRead, 8, buf)
		closeFrontend(t, f)
		if err := f.Reinitialise(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := f.Connect(ctx)
		cancel()
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if i == 10 {
			base = settled(t, bed)
		}
	}
	flat(t, bed, base, 256<<10)
	closeFrontend(t, f)
}

// A guest destroyed with requests in flight, a hundred times: xl destroy
// removes the guest's directory and detaches the disk while reads are
// outstanding, then removes the backend directory; the disk is attached
// again for a new guest. The backend's usage after the last cycle equals
// that after the tenth.
func TestGuestDestroyedMidIOCyclesStayFlat(t *testing.T) {
	cycles := 100
	if testing.Short() {
		cycles = 20
	}
	bed := quietBed(t)
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	var base usage
	for i := 1; i <= cycles; i++ {
		if err := xensim.AddDomain(bed.Dom0, 1, "guest1"); err != nil {
			t.Fatal(err)
		}
		// Unanswered requests give up quickly: the backend never sees
		// what the guest published after it closed.
		f := connect(t, bed, d, blkfront.Options{RequestTimeout: 300 * time.Millisecond})
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 4096)
				for {
					if st, err := f.Do(blkif.OpRead, 0, buf); err != nil || st != blkif.StatusOK {
						return
					}
				}
			}()
		}
		time.Sleep(2 * time.Millisecond)
		if err := bed.Dom0.Rm("/local/domain/1"); err != nil {
			t.Fatal(err)
		}
		if err := xensim.DetachDisk(bed.Dom0, d); err != nil {
			t.Fatal(err)
		}
		waitBackendState(t, bed, d, "6")
		if err := bed.Dom0.Rm(d.BackendPath()); err != nil {
			t.Fatal(err)
		}
		waitNoDevices(t, bed)
		wg.Wait()
		if err := f.Destroyed(); err != nil {
			t.Fatalf("cycle %d: the guest's rings after the backend let go: %v", i, err)
		}
		if i == 10 {
			base = settled(t, bed)
		}
	}
	flat(t, bed, base, 256<<10)
}

// waitNoDevices waits until the backend serves no device.
func waitNoDevices(t *testing.T, bed *testbed.Bed) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := 0
		bed.Backend.EachDevice(func(uint32, string, string, blkback.Stats) { n++ })
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d devices still served", n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
