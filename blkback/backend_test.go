package blkback_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/xensim"
	"blkdom/xensim/testbed"
)

// maxDirect is the most a request without indirect segments moves.
const maxDirect = blkif.MaxDirectSegments * 4096

// newBed starts a simulated machine for one test.
func newBed(t testing.TB) *testbed.Bed {
	t.Helper()
	return newBedWith(t, blkback.Options{})
}

// newBedWith starts a simulated machine whose backend has opts.
func newBedWith(t testing.TB, opts blkback.Options) *testbed.Bed {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t, testWriter{t})
	}
	bed, err := testbed.New(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := bed.Close(); err != nil {
			t.Error(err)
		}
	})
	return bed
}

// testLogger logs at debug level to w, which normally sends the lines to
// the test's log; benchmarks and fuzz targets log nothing.
func testLogger(t testing.TB, w io.Writer) *slog.Logger {
	switch t.(type) {
	case *testing.B, *testing.F:
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// lineLog keeps the lines it is written, for tests that look for one,
// and sends them on to the test's log.
type lineLog struct {
	t     testing.TB
	mu    sync.Mutex
	lines []string
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.lines = append(l.lines, string(p))
	l.mu.Unlock()
	return testWriter{l.t}.Write(p)
}

// count is how many lines hold s.
func (l *lineLog) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// testWriter sends the backend's log to the test's log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// newImage makes an image file of the given size with random content.
func newImage(t testing.TB, size int) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	rand.New(rand.NewSource(int64(size))).Read(data)
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, data
}

// connect attaches a disk and connects its frontend.
func connect(t testing.TB, bed *testbed.Bed, d xensim.Disk, opts blkfront.Options) *blkfront.Frontend {
	t.Helper()
	f, err := bed.Attach(d, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	return f
}

func closeFrontend(t testing.TB, f *blkfront.Frontend) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func do(t testing.TB, f *blkfront.Frontend, op uint8, sector uint64, buf []byte) {
	t.Helper()
	st, err := f.Do(op, sector, buf)
	if err != nil || st != blkif.StatusOK {
		t.Fatalf("op %d sector %d len %d: status %d, %v", op, sector, len(buf), st, err)
	}
}

func TestReadWriteMatchesImage(t *testing.T) {
	bed := newBed(t)
	const size = 8 << 20
	path, want := newImage(t, size)
	f := connect(t, bed, xensim.Disk{Backend: 0, Frontend: 1, Devid: 51712, Params: path}, blkfront.Options{})
	if f.Disk.Sectors != size/512 || f.Disk.SectorSize != 512 {
		t.Fatalf("disk %+v, want %d sectors of 512", f.Disk, size/512)
	}
	// Reads see the image as it is on disk.
	buf := make([]byte, maxDirect)
	do(t, f, blkif.OpRead, 0, buf)
	if !bytes.Equal(buf, want[:len(buf)]) {
		t.Fatal("first read differs from the image")
	}
	// Random writes of random lengths, then every sector read back.
	rng := rand.New(rand.NewSource(2))
	for range 200 {
		n := (1 + rng.Intn(maxDirect/512)) * 512
		sector := uint64(rng.Int63n(int64(size-n)/512 + 1))
		chunk := make([]byte, n)
		rng.Read(chunk)
		do(t, f, blkif.OpWrite, sector, chunk)
		copy(want[sector*512:], chunk)
	}
	do(t, f, blkif.OpFlushDiskcache, 0, nil)
	for off := 0; off < size; off += len(buf) {
		buf := buf[:min(len(buf), size-off)]
		do(t, f, blkif.OpRead, uint64(off/512), buf)
		if !bytes.Equal(buf, want[off:off+len(buf)]) {
			t.Fatalf("read at %d differs from what was written", off)
		}
	}
	closeFrontend(t, f)
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("image file differs from what the frontend wrote")
	}
}
