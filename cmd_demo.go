package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"blkdom/appliance"
	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/xensim"
	"blkdom/xensim/testbed"
)

// maxDemoSize bounds the demo's image: the workload keeps a model of the
// whole disk in memory.
const maxDemoSize = 1 << 30

// demoOptions are the demo's flags.
type demoOptions struct {
	image     string // "": a temporary file
	overwrite bool   // image may name an existing regular file
	size      int64
	duration  time.Duration
	depth     int
	seed      int64
	frontend  blkfront.Options
	verbose   bool
}

// demoCmd runs the real backend against the reference frontend on a
// simulated Xen: a verifying read/write/flush workload, then a byte-by-byte
// comparison of the image file with what the frontend wrote.
func demoCmd(fs *flag.FlagSet) func() error {
	var o demoOptions
	fs.StringVar(&o.image, "image", "", "create the image as `file` and keep it (default: a temporary file)")
	fs.BoolVar(&o.overwrite, "overwrite", false, "let -image replace an existing file")
	size := sizeFlag(64 << 20)
	fs.Var(&size, "size", "size of the image in `bytes`, or with a K, M or G suffix (a multiple of 512, at most 1G)")
	fs.DurationVar(&o.duration, "duration", 3*time.Second, "how long the workload runs")
	fs.IntVar(&o.depth, "depth", 16, "requests in flight")
	fs.Int64Var(&o.seed, "seed", 0, "seed of the workload's random choices (0: from the clock)")
	fs.IntVar(&o.frontend.Queues, "queues", 2, "rings the frontend asks for (multi-queue)")
	fs.IntVar(&o.frontend.RingPageOrder, "ring-order", 0, "the frontend asks for rings of 2^`N` pages")
	fs.BoolVar(&o.frontend.Persistent, "persistent", true, "the frontend asks for persistent grants")
	fs.IntVar(&o.frontend.IndirectSegments, "indirect", 32, "segments per indirect request the frontend uses (0: none)")
	fs.BoolVar(&o.verbose, "v", false, "log the backend's steps")
	return func() error {
		o.size = int64(size)
		if err := o.check(); err != nil {
			return err
		}
		if o.seed == 0 {
			o.seed = time.Now().UnixNano()
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		return runDemo(ctx, o)
	}
}

// check refuses what the demo cannot run with, as a usage error.
func (o demoOptions) check() error {
	switch {
	case o.size < 512 || o.size > maxDemoSize || o.size%512 != 0:
		size, limit := sizeFlag(o.size), sizeFlag(maxDemoSize)
		return usageErrorf("-size %v: want a multiple of 512 up to %v", &size, &limit)
	case o.duration <= 0:
		return usageErrorf("-duration %v: want a positive duration", o.duration)
	case o.depth < 1:
		return usageErrorf("-depth %d: want at least 1", o.depth)
	case o.frontend.Queues < 1:
		return usageErrorf("-queues %d: want at least 1", o.frontend.Queues)
	case o.frontend.RingPageOrder < 0:
		return usageErrorf("-ring-order %d: want 0 or more", o.frontend.RingPageOrder)
	case o.frontend.IndirectSegments < 0:
		return usageErrorf("-indirect %d: want 0 or more", o.frontend.IndirectSegments)
	}
	if o.image == "" {
		return nil
	}
	switch fi, err := os.Lstat(o.image); {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return usageErrorf("-image: %v", err)
	case !fi.Mode().IsRegular():
		return usageErrorf("-image %s: not a regular file", o.image)
	case !o.overwrite:
		return usageErrorf("-image %s exists: the demo writes over it (add -overwrite)", o.image)
	}
	return nil
}

// sizeFlag is a size in bytes, given with an optional K, M or G suffix.
type sizeFlag int64

// sizeSuffixes are sizeFlag's suffixes, each 2^10 times the one before.
const sizeSuffixes = "KMG"

func (s *sizeFlag) String() string {
	n, unit := int64(*s), ""
	for i := len(sizeSuffixes) - 1; i >= 0 && unit == ""; i-- {
		if shift := 10 * (i + 1); n != 0 && n%(1<<shift) == 0 {
			n, unit = n>>shift, sizeSuffixes[i:i+1]
		}
	}
	return strconv.FormatInt(n, 10) + unit
}

func (s *sizeFlag) Set(v string) error {
	shift := 0
	if i := strings.LastIndexAny(v, sizeSuffixes); i >= 0 && i == len(v)-1 {
		shift = 10 * (strings.IndexByte(sizeSuffixes, v[i]) + 1)
		v = v[:i]
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64>>shift {
		return errors.New("want bytes, or a number with a K, M or G suffix")
	}
	*s = sizeFlag(n << shift)
	return nil
}

// runDemo runs the demo until its workload ends or ctx is done (SIGINT,
// SIGTERM); either way it closes the device and removes its temporary
// files.
func runDemo(ctx context.Context, o demoOptions) error {
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	log := appliance.NewLogger(os.Stderr, level)
	dir, err := os.MkdirTemp("", "blkdom-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := o.image
	if path == "" {
		path = filepath.Join(dir, "disk.img")
	}
	if err := createImage(path, o.size, o.overwrite); err != nil {
		return err
	}
	// The model of the disk: what every byte must read as. The image
	// starts as zeros, so the model needs no copy of it.
	model := make([]byte, o.size)

	bed, err := testbed.New(dir, blkback.Options{Logger: log})
	if err != nil {
		return err
	}
	res, err := exercise(ctx, bed, path, model, o)
	if berr := bed.Close(); err == nil && berr != nil {
		err = fmt.Errorf("stopping the backend: %w", berr)
	}
	if err != nil {
		return err
	}
	res.print()

	// The image file itself, read back after the backend closed it.
	imageOK, err := sameContents(path, model)
	if err != nil {
		return err
	}
	fmt.Printf("image file: %s\n", verdict(imageOK))
	switch {
	case res.failures > 0:
		return fmt.Errorf("%d requests failed or read wrong data", res.failures)
	case !imageOK:
		return errors.New("the image file differs from what was written")
	case ctx.Err() != nil:
		return errors.New("interrupted (what ran verified)")
	}
	fmt.Println("every byte verified")
	return nil
}

// createImage makes path a sparse file of size zero bytes; it replaces
// an existing file only if overwrite is set.
func createImage(path string, size int64, overwrite bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if overwrite {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// exercise attaches the image to guest 1, runs the workload on it and
// closes the device again.
func exercise(ctx context.Context, bed *testbed.Bed, path string, model []byte, o demoOptions) (result, error) {
	f, err := bed.Attach(xensim.Disk{Backend: 0, Frontend: 1, Devid: 51712, Params: path}, o.frontend)
	if err != nil {
		return result{}, err
	}
	// Closing gets its own time, whatever the workload took or whether
	// it was interrupted.
	closeDevice := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := f.Close(ctx); err != nil {
			return fmt.Errorf("closing the device: %w", err)
		}
		return nil
	}
	connectCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := f.Connect(connectCtx); err != nil {
		closeDevice()
		return result{}, fmt.Errorf("connecting: %w", err)
	}
	if len(model)/o.depth < f.MaxTransfer() {
		closeDevice()
		return result{}, fmt.Errorf("a %d-byte image is too small for %d requests in flight of up to %d bytes",
			len(model), o.depth, f.MaxTransfer())
	}
	fmt.Printf("blkdom demo: %s, %d MiB, %d requests in flight for %v (seed %d)\n",
		path, len(model)>>20, o.depth, o.duration, o.seed)
	fmt.Printf("negotiated: %d queues, %d-page rings, persistent grants %v, %d segments per request\n",
		f.Disk.Queues, f.Disk.RingPages, f.Disk.Persistent, f.Disk.MaxSegments)
	res := workload(ctx, f, model, o.depth, o.duration, o.seed)
	return res, closeDevice()
}

// sameContents compares the file at path with want, a chunk at a time.
func sameContents(path string, want []byte) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for off := 0; off < len(want); {
		n, err := io.ReadFull(f, buf[:min(len(buf), len(want)-off)])
		if err != nil {
			return false, err
		}
		if !bytes.Equal(buf[:n], want[off:off+n]) {
			return false, nil
		}
		off += n
	}
	return true, nil
}

func verdict(ok bool) string {
	if ok {
		return "verified"
	}
	return "MISMATCH"
}

// result is what the workload measured.
type result struct {
	elapsed                 time.Duration
	reads, writes, flushes  int
	readBytes, writtenBytes int64
	failures                int
	latencies               []time.Duration
}

// workload runs depth goroutines, each owning one stripe of the disk so
// that the model stays exact: random writes, reads checked against the
// model, and occasional flushes, for d or until ctx is done.
func workload(ctx context.Context, f *blkfront.Frontend, model []byte, depth int, d time.Duration, seed int64) result {
	stripe := len(model) / depth / 512 * 512
	results := make([]result, depth)
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range depth {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[w]
			rng := rand.New(rand.NewSource(seed + int64(w)))
			base := w * stripe
			buf := make([]byte, f.MaxTransfer())
			for time.Now().Before(deadline) && ctx.Err() == nil {
				n := (1 + rng.Intn(len(buf)/512)) * 512
				off := base + rng.Intn((stripe-n)/512+1)*512
				var op uint8
				switch x := rng.Intn(100); {
				case x < 55:
					op = blkif.OpWrite
					rng.Read(buf[:n])
				case x < 97:
					op = blkif.OpRead
				default:
					op, n = blkif.OpFlushDiskcache, 0
				}
				t0 := time.Now()
				st, err := f.Do(op, uint64(off/512), buf[:n])
				r.latencies = append(r.latencies, time.Since(t0))
				if err != nil || st != blkif.StatusOK {
					r.failures++
					continue
				}
				switch op {
				case blkif.OpWrite:
					copy(model[off:], buf[:n])
					r.writes++
					r.writtenBytes += int64(n)
				case blkif.OpRead:
					if !bytes.Equal(buf[:n], model[off:off+n]) {
						r.failures++
					}
					r.reads++
					r.readBytes += int64(n)
				default:
					r.flushes++
				}
			}
		}()
	}
	wg.Wait()
	total := result{elapsed: time.Since(start)}
	for _, r := range results {
		total.reads += r.reads
		total.writes += r.writes
		total.flushes += r.flushes
		total.readBytes += r.readBytes
		total.writtenBytes += r.writtenBytes
		total.failures += r.failures
		total.latencies = append(total.latencies, r.latencies...)
	}
	return total
}

func (r result) print() {
	secs := r.elapsed.Seconds()
	ops := r.reads + r.writes + r.flushes
	fmt.Printf("requests: %d reads, %d writes, %d flushes in %.2fs: %.0f IOPS\n",
		r.reads, r.writes, r.flushes, secs, float64(ops)/secs)
	fmt.Printf("throughput: read %.1f MiB/s, write %.1f MiB/s\n",
		float64(r.readBytes)/secs/(1<<20), float64(r.writtenBytes)/secs/(1<<20))
	if len(r.latencies) > 0 {
		slices.Sort(r.latencies)
		p := func(q float64) time.Duration { return r.latencies[int(q*float64(len(r.latencies)-1))] }
		fmt.Printf("latency: p50 %v, p90 %v, p99 %v, max %v\n", p(0.50), p(0.90), p(0.99), p(1))
	}
	fmt.Printf("verification: %d failures\n", r.failures)
}
