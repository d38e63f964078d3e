package ebpf

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"testing"

	cilium "github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

func TestLoadErrorReason(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("step: %w", err) }
	for _, tc := range []struct {
		step Reason
		err  error
		want Reason
	}{
		{ReasonKernel, wrap(unix.EPERM), ReasonPermission},
		{ReasonNoBTF, wrap(unix.EACCES), ReasonPermission},
		{ReasonNoKprobes, wrap(os.ErrPermission), ReasonPermission},
		{ReasonKernel, wrap(unix.ENOSYS), ReasonNoBPF},
		{ReasonKernel, wrap(cilium.ErrNotSupported), ReasonNoBPF},
		{ReasonNoBTF, wrap(os.ErrNotExist), ReasonNoBTF},
		{ReasonNoBTF, wrap(cilium.ErrNotSupported), ReasonNoBTF},
		{ReasonNoKprobes, wrap(os.ErrNotExist), ReasonNoKprobes},
		{ReasonNoKprobes, wrap(cilium.ErrNotSupported), ReasonNoKprobes},
		{ReasonKernel, wrap(unix.EINVAL), ReasonKernel},
	} {
		le := loadError(tc.step, tc.err)
		if le.Reason != tc.want {
			t.Errorf("loadError(%v, %v).Reason = %v, want %v", tc.step, tc.err, le.Reason, tc.want)
		}
		if !errors.Is(le, tc.err) {
			t.Errorf("loadError(%v, %v) does not wrap the error", tc.step, tc.err)
		}
	}
}

// TestLoadWithoutPrivilege loads the probes from a thread that dropped all
// capabilities, as an unprivileged blkdom would.
func TestLoadWithoutPrivilege(t *testing.T) {
	requireRoot(t)
	// Load once with privilege, so that the library's cached feature probes
	// are not first run, and decided, without it.
	loadProbesForTest(t)
	errc := make(chan error)
	go func() {
		// Never unlocked: the thread without capabilities exits with the goroutine.
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var none [2]unix.CapUserData
		if err := unix.Capset(&hdr, &none[0]); err != nil {
			errc <- fmt.Errorf("drop capabilities: %w", err)
			return
		}
		p, err := Load(Options{})
		if err == nil {
			p.Close()
			err = errors.New("Load succeeded without capabilities")
		}
		errc <- err
	}()
	err := <-errc
	var le *LoadError
	if !errors.As(err, &le) || le.Reason != ReasonPermission {
		t.Fatalf("Load without capabilities = %v, want a LoadError with ReasonPermission", err)
	}
	t.Log(err)
}
