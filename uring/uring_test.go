package uring

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func newRing(t *testing.T, entries uint32) *Ring {
	t.Helper()
	r, err := New(entries)
	if err != nil {
		t.Skipf("no io_uring here: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// collect submits, waits and reaps until n completions were seen.
func collect(t *testing.T, r *Ring, n int) map[uint64]int32 {
	t.Helper()
	got := make(map[uint64]int32)
	for len(got) < n {
		if err := r.Submit(!r.Ready()); err != nil {
			t.Fatal(err)
		}
		r.Reap(func(tag uint64, res int32) { got[tag] = res })
	}
	return got
}

// A batch of vectored writes, an fdatasync and vectored reads of a real
// file move exactly the bytes asked for, each completion under its tag.
func TestReadWriteSync(t *testing.T) {
	r := newRing(t, 8)
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	a, b := bytes.Repeat([]byte("a"), 4096), bytes.Repeat([]byte("b"), 512)
	w1 := []unix.Iovec{{Base: &a[0]}, {Base: &b[0]}}
	w1[0].SetLen(len(a))
	w1[1].SetLen(len(b))
	if err := r.Writev(fd, w1, 8192, 1); err != nil {
		t.Fatal(err)
	}
	if err := r.Writev(fd, w1[1:], 0, 2); err != nil {
		t.Fatal(err)
	}
	if r.Pending() != 2 {
		t.Fatalf("pending %d, want 2", r.Pending())
	}
	got := collect(t, r, 2)
	if got[1] != 4608 || got[2] != 512 {
		t.Fatalf("write results %v, want 4608 and 512", got)
	}
	if err := r.Fdatasync(fd, 3); err != nil {
		t.Fatal(err)
	}
	if got := collect(t, r, 1); got[3] != 0 {
		t.Fatalf("fdatasync: %v", Errno(got[3]))
	}
	back := make([]byte, 4608)
	rv := []unix.Iovec{{Base: &back[0]}}
	rv[0].SetLen(len(back))
	if err := r.Readv(fd, rv, 8192, 4); err != nil {
		t.Fatal(err)
	}
	if got := collect(t, r, 1); got[4] != 4608 {
		t.Fatalf("read %d bytes, want 4608", got[4])
	}
	if !bytes.Equal(back, append(a, b...)) {
		t.Fatal("read back other bytes than written")
	}
}

// Errors come back as negated errnos: a read of a closed descriptor.
func TestErrorResult(t *testing.T) {
	r := newRing(t, 2)
	buf := make([]byte, 8)
	if err := r.Read(1<<20, buf, 9); err != nil {
		t.Fatal(err)
	}
	got := collect(t, r, 1)
	if Errno(got[9]) != unix.EBADF {
		t.Fatalf("result %d (%v), want EBADF", got[9], Errno(got[9]))
	}
	if Errno(5) != nil {
		t.Fatal("a byte count is not an error")
	}
}

// A read of an eventfd completes only once the eventfd is written: the
// way a ring is woken while it waits for I/O.
func TestEventfdWakes(t *testing.T) {
	r := newRing(t, 2)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	var buf [8]byte
	if err := r.Read(efd, buf[:], 7); err != nil {
		t.Fatal(err)
	}
	if err := r.Submit(false); err != nil {
		t.Fatal(err)
	}
	if r.Ready() {
		t.Fatal("eventfd read completed before the eventfd was written")
	}
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	if _, err := unix.Write(efd, one[:]); err != nil {
		t.Fatal(err)
	}
	if got := collect(t, r, 1); got[7] != 8 || binary.NativeEndian.Uint64(buf[:]) != 1 {
		t.Fatalf("eventfd read %d bytes, value %d", got[7], binary.NativeEndian.Uint64(buf[:]))
	}
}

// A poll of a non-blocking descriptor completes with POLLIN only once the
// descriptor is readable, and at once when it already is: the ring's loop
// waits this way for the event-channel device.
func TestPollIn(t *testing.T) {
	r := newRing(t, 2)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := r.PollIn(efd, 3); err != nil {
		t.Fatal(err)
	}
	if err := r.Submit(false); err != nil {
		t.Fatal(err)
	}
	if r.Ready() {
		t.Fatal("poll completed before the descriptor was readable")
	}
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	if _, err := unix.Write(efd, one[:]); err != nil {
		t.Fatal(err)
	}
	if got := collect(t, r, 1); got[3] != unix.POLLIN {
		t.Fatalf("poll result %#x, want POLLIN", got[3])
	}
	// Still readable: a new poll completes at once.
	if err := r.PollIn(efd, 4); err != nil {
		t.Fatal(err)
	}
	if got := collect(t, r, 1); got[4] != unix.POLLIN {
		t.Fatalf("second poll result %#x, want POLLIN", got[4])
	}
}

// A full submission queue says so instead of overwriting an entry.
func TestFull(t *testing.T) {
	r := newRing(t, 2)
	buf := make([]byte, 8)
	n := 0
	for ; r.Read(-1, buf, uint64(n)) == nil; n++ {
		if n > 64 {
			t.Fatal("submission queue never fills")
		}
	}
	if n != len(r.sqes) {
		t.Fatalf("queued %d before ErrFull, queue holds %d", n, len(r.sqes))
	}
	collect(t, r, n)
	if err := r.Read(-1, buf, 99); err != nil {
		t.Fatalf("after reaping: %v", err)
	}
}

// Fallocate punches a hole: the file's blocks go.
func TestFallocate(t *testing.T) {
	r := newRing(t, 2)
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(bytes.Repeat([]byte{1}, 1<<20)); err != nil {
		t.Fatal(err)
	}
	f.Sync()
	if err := r.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 1<<20, 5); err != nil {
		t.Fatal(err)
	}
	if got := collect(t, r, 1); got[5] != 0 {
		t.Fatalf("fallocate: %v", Errno(got[5]))
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks != 0 || st.Size != 1<<20 {
		t.Fatalf("after the punch: %d blocks, size %d; want 0 blocks, size 1 MiB", st.Blocks, st.Size)
	}
}
