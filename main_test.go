package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/xensim"
	"blkdom/xensim/testbed"
)

// The demo runs its workload and verifies every byte.
func TestDemo(t *testing.T) {
	if err := runDemo([]string{"-duration", "500ms", "-size", "8388608", "-seed", "1"}); err != nil {
		t.Fatal(err)
	}
}

// blkdom stat prints what a backend published, read through xenstore.
func TestStat(t *testing.T) {
	bed, err := testbed.New(t.TempDir(), blkback.Options{StatsInterval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer bed.Close()
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := bed.Attach(xensim.Disk{Frontend: 3, Devid: 51728, Params: img}, blkfront.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	for range 7 {
		if st, err := f.Do(blkif.OpWrite, 0, make([]byte, 4096)); err != nil || st != 0 {
			t.Fatal(st, err)
		}
	}
	want := []string{"0", "3", "51728", "0", "7", "0", "0", "0", "56"}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var out bytes.Buffer
		if err := printStats(&out, bed.Dom0, -1); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) == 2 && strings.Join(strings.Fields(lines[1])[:len(want)], " ") == strings.Join(want, " ") {
			if !strings.HasSuffix(lines[1], "off  direct") {
				t.Errorf("late_refs without probes, or the cache policy: %q", lines[1])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("blkdom stat printed:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
