package gnttab

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// openNull returns a Device whose fd is /dev/null: every ioctl fails with
// ENOTTY, which exercises the paths that check arguments before the kernel
// and the paths that unwind after it refuses.
func openNull(t *testing.T) *Device {
	t.Helper()
	fd, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	d := &Device{fd: fd}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestMapRejectsBatchSize(t *testing.T) {
	d := openNull(t)
	for _, n := range []int{0, MaxBatch + 1} {
		if _, err := d.Map(1, make([]Ref, n), false); !errors.Is(err, unix.EINVAL) {
			t.Errorf("Map of %d refs: err = %v, want EINVAL", n, err)
		}
	}
	if _, err := d.Map(1, []Ref{8}, true); !errors.Is(err, unix.ENOTTY) {
		t.Errorf("Map on /dev/null: err = %v, want the kernel's ENOTTY", err)
	}
	if err := d.Unmap(Mapping{Mem: make([]byte, 100)}); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Unmap of a partial page: err = %v, want EINVAL", err)
	}
}

func TestCopyStatusesWithoutKernel(t *testing.T) {
	d := openNull(t)
	buf := make([]byte, PageSize)
	segs := []CopySegment{
		{Dom: 1, Ref: 8, Local: nil, Status: 99},
		{Dom: 1, Ref: 8, Offset: 4000, Local: buf[:200]},
		{Dom: 0xffff, Ref: 8, Local: buf[:512]},
	}
	err := d.Copy(segs)
	var ce *CopyError
	if !errors.As(err, &ce) || ce.Failed != 3 || ce.First != 0 {
		t.Fatalf("Copy = %v, want 3 failures from #0", err)
	}
	for i, want := range []Status{StatusBadCopyArg, StatusBadCopyArg, StatusBadDomain} {
		if segs[i].Status != want {
			t.Errorf("segs[%d].Status = %v, want %v", i, segs[i].Status, want)
		}
	}
}

func TestCopyIoctlFailureMarksRest(t *testing.T) {
	d := openNull(t)
	buf := make([]byte, PageSize)
	segs := make([]CopySegment, copyChunk+3)
	for i := range segs {
		segs[i] = CopySegment{Dom: 1, Ref: Ref(8 + i), Local: buf[:512], Status: StatusOK}
	}
	segs[1].Local = nil // fails before the kernel
	err := d.Copy(segs)
	if !errors.Is(err, unix.ENOTTY) {
		t.Fatalf("Copy on /dev/null = %v, want ENOTTY", err)
	}
	for i := range segs {
		want := StatusGeneralError
		if i == 1 {
			want = StatusBadCopyArg
		}
		if segs[i].Status != want {
			t.Errorf("segs[%d].Status = %v, want %v", i, segs[i].Status, want)
		}
	}
}

func TestClosed(t *testing.T) {
	d := openNull(t)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Map(1, []Ref{8}, false); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Map after Close: %v", err)
	}
	if err := d.Unmap(Mapping{Mem: make([]byte, PageSize)}); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Unmap after Close: %v", err)
	}
	if err := d.Copy([]CopySegment{{Dom: 1, Local: make([]byte, 1)}}); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Copy after Close: %v", err)
	}
	if err := d.SetMaxGrants(8); !errors.Is(err, os.ErrClosed) {
		t.Errorf("SetMaxGrants after Close: %v", err)
	}
	if err := d.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
}
