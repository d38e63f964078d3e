package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/xensim"
	"blkdom/xensim/testbed"
)

// runDemo runs the real backend against the reference frontend on a
// simulated Xen: a verifying read/write/flush workload, then a byte-by-byte
// comparison of the image file with what the frontend wrote.
func runDemo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	image := fs.String("image", "", "image file to serve (default: a new temporary one)")
	size := fs.Int64("size", 64<<20, "size of the temporary image in bytes")
	duration := fs.Duration("duration", 3*time.Second, "how long the workload runs")
	depth := fs.Int("depth", 16, "requests in flight")
	seed := fs.Int64("seed", time.Now().UnixNano(), "seed of the workload's random choices")
	var fo blkfront.Options
	fs.IntVar(&fo.Queues, "queues", 2, "rings the frontend asks for (multi-queue)")
	fs.IntVar(&fo.RingPageOrder, "ring-order", 0, "the frontend asks for rings of 2^N pages")
	fs.BoolVar(&fo.Persistent, "persistent", true, "the frontend asks for persistent grants")
	fs.IntVar(&fo.IndirectSegments, "indirect", 32, "segments per indirect request the frontend uses (0: none)")
	verbose := fs.Bool("v", false, "log the backend's steps")
	if err := fs.Parse(args); err != nil {
		return err
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	dir, err := os.MkdirTemp("", "blkdom-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := *image
	if path == "" {
		path = filepath.Join(dir, "disk.img")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			return err
		}
		if err := os.Truncate(path, *size); err != nil {
			return err
		}
	}
	// The model of the disk: what every byte must read as.
	model, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	model = model[:len(model)/512*512]

	bed, err := testbed.New(dir, blkback.Options{Logger: log})
	if err != nil {
		return err
	}
	f, err := bed.Attach(xensim.Disk{Backend: 0, Frontend: 1, Devid: 51712, Params: path}, fo)
	if err != nil {
		bed.Close()
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.Connect(ctx); err != nil {
		bed.Close()
		return err
	}
	if len(model) / *depth < f.MaxTransfer() {
		f.Close(ctx)
		bed.Close()
		return fmt.Errorf("image %s too small for %d requests in flight", path, *depth)
	}
	fmt.Printf("blkdom demo: %s, %d MiB, %d requests in flight for %v (seed %d)\n",
		path, len(model)>>20, *depth, *duration, *seed)
	fmt.Printf("negotiated: %d queues, %d-page rings, persistent grants %v, %d segments per request\n",
		f.Disk.Queues, f.Disk.RingPages, f.Disk.Persistent, f.Disk.MaxSegments)

	res := workload(f, model, *depth, *duration, *seed)
	closeErr := f.Close(ctx)
	bedErr := bed.Close()
	res.print()

	// The image file itself, read back after the backend closed it.
	disk, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	imageOK := bytes.Equal(disk[:len(model)], model)
	fmt.Printf("image file: %s\n", verdict(imageOK))
	switch {
	case res.failures > 0:
		return fmt.Errorf("%d requests failed or read wrong data", res.failures)
	case !imageOK:
		return errors.New("the image file differs from what was written")
	case closeErr != nil:
		return fmt.Errorf("closing the device: %w", closeErr)
	case bedErr != nil:
		return fmt.Errorf("stopping the backend: %w", bedErr)
	}
	fmt.Println("every byte verified")
	return nil
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
// model, and occasional flushes.
func workload(f *blkfront.Frontend, model []byte, depth int, d time.Duration, seed int64) result {
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
			for time.Now().Before(deadline) {
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
