package blkback_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/xensim"
	"blkdom/xensim/testbed"
	"blkdom/xs"
)

// secondBackend starts another backend for dom0 on bed's xenstore and
// returns Serve's result channel and the function that stops it.
func secondBackend(t *testing.T, bed *testbed.Bed) (<-chan error, context.CancelFunc) {
	t.Helper()
	c, err := xs.Dial(bed.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	dom := bed.Xen.Domain(0)
	b := blkback.New(c, blkback.NewPlatform(dom.OpenGrants, dom.OpenEvents),
		blkback.Options{Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Serve(ctx) }()
	t.Cleanup(cancel)
	return done, cancel
}

// ownerToken waits for bed's backend to claim dom0's backend/vbd and
// returns its owner token.
func ownerToken(t *testing.T, bed *testbed.Bed) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if v, err := bed.Dom0.Read(ownerKey); err == nil {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatal("the backend wrote no owner token")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const ownerKey = "/local/domain/0/data/blkdom-owner"

// A second backend on the same backend/vbd is refused at start, saying
// who serves it; the first one's connected disk goes on undisturbed.
func TestSecondBackendRefused(t *testing.T) {
	bed := newBed(t)
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	f := connect(t, bed, d, blkfront.Options{})
	done, _ := secondBackend(t, bed)
	select {
	case err := <-done:
		if !errors.Is(err, blkback.ErrOtherBackend) || !strings.Contains(err.Error(), fmt.Sprintf("process %d", os.Getpid())) {
			t.Fatalf("second backend: %v, want ErrOtherBackend naming process %d", err, os.Getpid())
		}
		t.Log(err)
	case <-time.After(5 * time.Second):
		t.Fatal("a second backend started on the same backend/vbd")
	}
	time.Sleep(100 * time.Millisecond) // what a second backend would have disturbed by now
	if v, _ := bed.Dom0.Read(d.BackendPath() + "/state"); v != "4" {
		t.Errorf("backend state %q after the refused start, want 4", v)
	}
	for i := range 16 {
		do(t, f, blkif.OpWrite, uint64(8*i), make([]byte, 4096))
	}
	closeFrontend(t, f)
}

// A token left by a backend that died (kill -9) is taken over, so blkdom
// restarts; a backend removes its own token when it stops.
func TestDeadOwnerTakenOver(t *testing.T) {
	bed := newBed(t)
	key := ownerKey
	live := ownerToken(t, bed)
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(live)
	stale := fmt.Sprintf("%d %s %s dead", gone.Process.Pid, f[1], f[2])
	if err := bed.Dom0.Write(key, stale); err != nil {
		t.Fatal(err)
	}
	done, stop := secondBackend(t, bed)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if v, _ := bed.Dom0.Read(key); v != stale && strings.HasPrefix(v, fmt.Sprint(os.Getpid())+" ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the dead backend's token was not taken over")
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v, err := bed.Dom0.Read(key); err == nil {
		t.Errorf("owner token %q left after the backend stopped", v)
	}
}

// With the kernel's xen-blkback loaded, blkdom refuses to start and says
// how to unload it.
func TestKernelBackendRefused(t *testing.T) {
	bed := newBed(t)
	ownerToken(t, bed) // the running backend has looked for xen-blkback
	saved := *blkback.KernelBackend
	*blkback.KernelBackend = t.TempDir()
	t.Cleanup(func() { *blkback.KernelBackend = saved })
	done, _ := secondBackend(t, bed)
	if err := <-done; !errors.Is(err, blkback.ErrOtherBackend) || !strings.Contains(err.Error(), "rmmod xen-blkback") {
		t.Fatalf("with xen-blkback loaded: %v", err)
	}
}
