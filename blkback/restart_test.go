package blkback_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/xensim"
)

// A backend killed with requests in flight (ErrAbandon: rings dropped
// where they stand, responses unpublished, handles closed hard), or
// handing over in order (ErrHandOver), is followed by a new backend that
// adopts the connected frontends: their disks stay Connected on both
// sides, no request fails or goes unanswered or is answered twice, and
// every acknowledged write reads back. Writers of many sizes (indirect
// ones too) over two rings, with flushes and barriers, keep requests in
// flight across each restart.
func TestRestartAdoptsConnectedGuests(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cause error
		opts  blkfront.Options
	}{
		{"kill", blkback.ErrAbandon, blkfront.Options{Queues: 2, IndirectSegments: 32}},
		{"kill persistent", blkback.ErrAbandon, blkfront.Options{Persistent: true, RingPageOrder: 1}},
		{"hand-over", blkback.ErrHandOver, blkfront.Options{Queues: 2, IndirectSegments: 32}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := t.TempDir()
			bed := newBedWith(t, blkback.Options{StateDir: state, MaxQueues: 2})
			const size = 8 << 20
			path, want := newImage(t, size)
			d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
			tc.opts.RequestTimeout = 20 * time.Second
			f := connect(t, bed, d, tc.opts)
			// Any state other than Connected, on either side, fails.
			var left atomic.Value
			for _, key := range []string{d.BackendPath() + "/state", "/local/domain/1/device/vbd/51712/state"} {
				w, err := bed.Dom0.Watch(key, "t"+key, func(string) {
					if v, _ := bed.Dom0.Read(key); v != "4" {
						left.Store(key + " = " + v)
					}
				})
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
			}

			const writers = 12
			region := size / writers / 512 * 512
			var mu sync.Mutex
			var ops atomic.Int64
			stop := make(chan struct{})
			errs := make(chan error, writers)
			var wg sync.WaitGroup
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewSource(int64(w)))
					base := w * region
					for n := 0; ; n++ {
						select {
						case <-stop:
							errs <- nil
							return
						default:
						}
						op, sector, buf := uint8(blkif.OpWrite), uint64(0), []byte(nil)
						switch {
						case n%7 == 6:
							op = blkif.OpFlushDiskcache
						case n%11 == 10 && f.Disk.Barrier:
							op = blkif.OpWriteBarrier
						}
						if op != blkif.OpFlushDiskcache {
							most := min(f.MaxTransfer(), region)
							if op == blkif.OpWriteBarrier {
								most = maxDirect // a barrier is never indirect
							}
							l := (1 + rng.Intn(most/512)) * 512
							off := base + rng.Intn((region-l)/512+1)*512
							sector, buf = uint64(off/512), make([]byte, l)
							rng.Read(buf)
						}
						st, err := f.Do(op, sector, buf)
						if err == nil && st != blkif.StatusOK {
							err = fmt.Errorf("status %d", st)
						}
						if err != nil {
							errs <- fmt.Errorf("writer %d op %d sector %d len %d: %w", w, op, sector, len(buf), err)
							return
						}
						ops.Add(1)
						if buf != nil {
							mu.Lock()
							copy(want[sector*512:], buf)
							mu.Unlock()
						}
					}
				}()
			}
			for range 6 {
				time.Sleep(30 * time.Millisecond)
				before := ops.Load()
				if err := bed.Restart(tc.cause); err != nil {
					t.Fatal(err)
				}
				waitOps(t, &ops, before+writers)
			}
			close(stop)
			wg.Wait()
			for range writers {
				if err := <-errs; err != nil {
					t.Error(err)
				}
			}
			if v := left.Load(); v != nil {
				t.Errorf("a state left Connected: %s", v)
			}
			if n := f.Stray(); n != 0 {
				t.Errorf("%d responses answered no request in flight", n)
			}
			buf := make([]byte, f.MaxTransfer())
			for off := 0; off < size; off += len(buf) {
				buf := buf[:min(len(buf), size-off)]
				do(t, f, blkif.OpRead, uint64(off/512), buf)
				if !bytes.Equal(buf, want[off:off+len(buf)]) {
					t.Fatalf("read at %d differs from what was acknowledged", off)
				}
			}
			t.Logf("%d requests over 6 restarts", ops.Load())
			closeFrontend(t, f)
			if ents, _ := os.ReadDir(state); len(ents) != 0 {
				t.Errorf("ledgers left after an orderly close: %v", ents)
			}
		})
	}
}

// waitOps waits until the writers have done n requests in all: the new
// backend serves.
func waitOps(t *testing.T, ops *atomic.Int64, n int64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for ops.Load() < n {
		if time.Now().After(deadline) {
			t.Fatal(errors.New("no requests served after the restart"))
		}
		time.Sleep(time.Millisecond)
	}
}

// TestStaleLedgersRemoved: at start a backend removes the ledgers of
// devices no longer in xenstore (removed while no blkdom ran) and keeps
// the ledger of a connected device, which it adopts, and files that are
// no ledgers.
func TestStaleLedgersRemoved(t *testing.T) {
	state := t.TempDir()
	bed := newBedWith(t, blkback.Options{StateDir: state})
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	connect(t, bed, d, blkfront.Options{RequestTimeout: 20 * time.Second})
	live := filepath.Join(state, "vbd-1-51712-0")
	if _, err := os.Stat(live); err != nil {
		t.Fatalf("the connected disk's ledger: %v", err)
	}
	stale := []string{"vbd-1-51728-0", "vbd-7-51712-0", "vbd-7-51712-1"}
	others := []string{"notes", "vbd-1-51712", "vbd-x-51712-0"}
	for _, name := range append(stale, others...) {
		if err := os.WriteFile(filepath.Join(state, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := bed.Restart(blkback.ErrAbandon); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		left := 0
		for _, name := range stale {
			if _, err := os.Stat(filepath.Join(state, name)); err == nil {
				left++
			}
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d stale ledgers left", left)
		}
	}
	for _, name := range append(others, "vbd-1-51712-0") {
		if _, err := os.Stat(filepath.Join(state, name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
