package blkback_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/gnttab"
	"blkdom/xensim"
)

// workload runs depth goroutines of random writes, each read back and
// compared, on disjoint stripes of f's disk, and returns the first error.
func workload(f *blkfront.Frontend, depth, rounds int, seed int64) error {
	stripe := int(f.Disk.Sectors*512) / depth / 4096 * 4096
	var wg sync.WaitGroup
	errs := make(chan error, depth)
	for w := range depth {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed + int64(w)))
			max := min(f.MaxTransfer(), stripe)
			for range rounds {
				n := (1 + rng.Intn(max/512)) * 512
				off := w*stripe + rng.Intn((stripe-n)/512+1)*512
				buf := make([]byte, n)
				rng.Read(buf)
				if st, err := f.Do(blkif.OpWrite, uint64(off/512), buf); err != nil || st != blkif.StatusOK {
					errs <- fmt.Errorf("write %d bytes at %d: status %d, %v", n, off, st, err)
					return
				}
				got := make([]byte, n)
				if st, err := f.Do(blkif.OpRead, uint64(off/512), got); err != nil || st != blkif.StatusOK {
					errs <- fmt.Errorf("read %d bytes at %d: status %d, %v", n, off, st, err)
					return
				}
				if !bytes.Equal(got, buf) {
					errs <- fmt.Errorf("%d bytes at %d read back wrong", n, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// Every combination the frontend can negotiate moves data correctly, and
// the negotiation lands where it should.
func TestNegotiatedFeatures(t *testing.T) {
	tests := []struct {
		name    string
		backend blkback.Options
		front   blkfront.Options
		want    blkfront.Disk
	}{
		{"plain", blkback.Options{}, blkfront.Options{},
			blkfront.Disk{Queues: 1, RingPages: 1, MaxSegments: 11}},
		{"indirect 256", blkback.Options{}, blkfront.Options{IndirectSegments: 256},
			blkfront.Disk{Queues: 1, RingPages: 1, MaxSegments: 256}},
		{"indirect capped by the backend", blkback.Options{MaxIndirectSegments: 64}, blkfront.Options{IndirectSegments: 256},
			blkfront.Disk{Queues: 1, RingPages: 1, MaxSegments: 64}},
		{"16-page ring", blkback.Options{}, blkfront.Options{RingPageOrder: 4},
			blkfront.Disk{Queues: 1, RingPages: 16, MaxSegments: 11}},
		{"ring order capped", blkback.Options{MaxRingPageOrder: 2}, blkfront.Options{RingPageOrder: 4},
			blkfront.Disk{Queues: 1, RingPages: 4, MaxSegments: 11}},
		{"4 queues", blkback.Options{MaxQueues: 4, DiskMemory: -1}, blkfront.Options{Queues: 4},
			blkfront.Disk{Queues: 4, RingPages: 1, MaxSegments: 11}},
		{"queues capped", blkback.Options{MaxQueues: 2}, blkfront.Options{Queues: 4},
			blkfront.Disk{Queues: 2, RingPages: 1, MaxSegments: 11}},
		{"queues within the disk memory budget", blkback.Options{MaxQueues: 16, DiskMemory: 60 << 20}, blkfront.Options{Queues: 16},
			blkfront.Disk{Queues: 2, RingPages: 1, MaxSegments: 11}},
		{"persistent", blkback.Options{}, blkfront.Options{Persistent: true},
			blkfront.Disk{Queues: 1, RingPages: 1, MaxSegments: 11, Persistent: true}},
		{"persistent not offered", blkback.Options{PersistentGrants: -1}, blkfront.Options{Persistent: true},
			blkfront.Disk{Queues: 1, RingPages: 1, MaxSegments: 11}},
		{"everything", blkback.Options{MaxQueues: 3}, blkfront.Options{Queues: 3, RingPageOrder: 3, Persistent: true, IndirectSegments: 256},
			blkfront.Disk{Queues: 3, RingPages: 8, MaxSegments: 256, Persistent: true}},
		{"small persistent cache", blkback.Options{PersistentGrants: 8}, blkfront.Options{Persistent: true, IndirectSegments: 32},
			blkfront.Disk{Queues: 1, RingPages: 1, MaxSegments: 32, Persistent: true}},
		{"x86_32 layout", blkback.Options{}, blkfront.Options{Protocol: "x86_32-abi", IndirectSegments: 64},
			blkfront.Disk{Queues: 1, RingPages: 1, MaxSegments: 64}},
		{"no protocol key: x86_32", blkback.Options{}, blkfront.Options{Protocol: "x86_32-abi", OmitProtocol: true},
			blkfront.Disk{Queues: 1, RingPages: 1, MaxSegments: 11}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bed := newBedWith(t, tt.backend)
			path, _ := newImage(t, 8<<20)
			f := connect(t, bed, xensim.Disk{Frontend: 1, Devid: 51712, Params: path}, tt.front)
			got := f.Disk
			if got.Queues != tt.want.Queues || got.RingPages != tt.want.RingPages ||
				got.MaxSegments != tt.want.MaxSegments || got.Persistent != tt.want.Persistent {
				t.Errorf("negotiated %d queues, %d ring pages, %d segments, persistent %v; want %d, %d, %d, %v",
					got.Queues, got.RingPages, got.MaxSegments, got.Persistent,
					tt.want.Queues, tt.want.RingPages, tt.want.MaxSegments, tt.want.Persistent)
			}
			if err := workload(f, 16, 20, 1); err != nil {
				t.Fatal(err)
			}
			closeFrontend(t, f) // fails if the backend left any grant mapped
		})
	}
}

// Persistent grants stay mapped while connected, and all are unmapped
// when the frontend closes (its grants could not end otherwise).
func TestPersistentGrantsStayMapped(t *testing.T) {
	bed := newBed(t)
	path, _ := newImage(t, 1<<20)
	f := connect(t, bed, xensim.Disk{Frontend: 1, Devid: 51712, Params: path}, blkfront.Options{Persistent: true})
	do(t, f, blkif.OpWrite, 0, make([]byte, 8192))
	guest := bed.Xen.Domain(1)
	mapped := 0
	for ref := 0; ref < 4096; ref++ {
		mapped += guest.GrantMapCount(gnttab.Ref(ref))
	}
	// The ring page is mapped once; two persistent data pages stay mapped.
	if mapped < 3 {
		t.Errorf("%d grants mapped after a persistent write; want the ring and 2 data pages", mapped)
	}
	closeFrontend(t, f)
}

// Reconnecting in the middle of indirect, persistent, multi-queue traffic
// loses nothing and leaks no grant.
func TestReconnectUnderTraffic(t *testing.T) {
	bed := newBedWith(t, blkback.Options{MaxQueues: 2})
	path, _ := newImage(t, 8<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	f := connect(t, bed, d, blkfront.Options{Queues: 2, Persistent: true, IndirectSegments: 128, RingPageOrder: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for round := range 3 {
		if err := workload(f, 8, 10, int64(round)); err != nil {
			t.Fatal(err)
		}
		closeFrontend(t, f)
		waitBackendState(t, bed, d, "6")
		if err := f.Reinitialise(); err != nil {
			t.Fatal(err)
		}
		if err := f.Connect(ctx); err != nil {
			t.Fatalf("reconnect %d: %v", round, err)
		}
	}
	if err := workload(f, 8, 10, 9); err != nil {
		t.Fatal(err)
	}
	closeFrontend(t, f)
}

// allocatedBlocks is st_blocks of path.
func allocatedBlocks(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks
}

func discardRequest(f *blkfront.Frontend, flags uint8, sector, count uint64) func([]byte) {
	return func(slot []byte) { f.ABI().PutDiscard(slot, 0, sector, count, flags) }
}

// Discard punches holes in a file: its allocated size goes down and the
// range reads as zeros; with discard-enable=0 it is neither offered nor
// done.
func TestDiscardPunchesHoles(t *testing.T) {
	bed := newBed(t)
	path, _ := newImage(t, 4<<20)
	f := connect(t, bed, xensim.Disk{Frontend: 1, Devid: 51712, Params: path}, blkfront.Options{})
	if !f.Disk.Discard || f.Disk.DiscardGranularity == 0 {
		t.Fatalf("discard not offered: %+v", f.Disk)
	}
	before := allocatedBlocks(t, path)
	if st, err := f.Raw(discardRequest(f, 0, 2048, 4096)); err != nil || st != blkif.StatusOK {
		t.Fatalf("discard: status %d, %v", st, err)
	}
	if after := allocatedBlocks(t, path); after >= before {
		t.Errorf("allocated blocks %d before the discard, %d after", before, after)
	}
	got := make([]byte, 4096)
	do(t, f, blkif.OpRead, 2048, got)
	if !bytes.Equal(got, make([]byte, 4096)) {
		t.Error("discarded range does not read as zeros")
	}
	closeFrontend(t, f)

	path2, _ := newImage(t, 1<<20)
	g := connect(t, bed, xensim.Disk{Frontend: 2, Devid: 51712, Params: path2, Extra: map[string]string{"discard-enable": "0"}}, blkfront.Options{})
	if g.Disk.Discard {
		t.Error("discard offered with discard-enable=0")
	}
	if st, err := g.Raw(discardRequest(g, 0, 0, 8)); err != nil || st != blkif.StatusNotSupported {
		t.Errorf("discard with discard-enable=0: status %d, %v", st, err)
	}
	closeFrontend(t, g)
}

// A disk whose device has 4 KiB logical sectors is published as such,
// sectors still in 512-byte units, and requests not aligned to 4 KiB are
// refused. The device is a real loop device.
func TestFourKSectorDevice(t *testing.T) {
	img, want := newImage(t, 4<<20)
	out, err := exec.Command("losetup", "--find", "--show", "--sector-size", "4096", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup (root and util-linux needed): %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	bed := newBed(t)
	f := connect(t, bed, xensim.Disk{Frontend: 1, Devid: 51712, Params: dev}, blkfront.Options{})
	if f.Disk.SectorSize != 4096 || f.Disk.Sectors != 4<<20/512 {
		t.Fatalf("disk %d sectors of %d bytes, want %d of 4096", f.Disk.Sectors, f.Disk.SectorSize, 4<<20/512)
	}
	buf := make([]byte, 8192)
	do(t, f, blkif.OpRead, 8, buf)
	if !bytes.Equal(buf, want[4096:4096+8192]) {
		t.Error("read from the 4K device differs from its file")
	}
	for _, sector := range []uint64{1, 4, 7} {
		if st, _ := f.Do(blkif.OpRead, sector, buf); st != blkif.StatusError {
			t.Errorf("read at sector %d of a 4K disk: status %d, want an error", sector, st)
		}
	}
	if st, _ := f.Do(blkif.OpRead, 8, buf[:512]); st != blkif.StatusError {
		t.Errorf("512-byte read of a 4K disk: status %d, want an error", st)
	}
	closeFrontend(t, f)
}

func TestCDROMInfo(t *testing.T) {
	bed := newBed(t)
	path, _ := newImage(t, 1<<20)
	f := connect(t, bed, xensim.Disk{Frontend: 1, Devid: 5632, Params: path, CDROM: true, ReadOnly: true}, blkfront.Options{})
	if f.Disk.Info != blkif.InfoCDROM|blkif.InfoReadOnly {
		t.Errorf("info %d, want CD-ROM and read-only bits", f.Disk.Info)
	}
	closeFrontend(t, f)
}

// Growing the image while connected is published: sectors first, then
// the state key rewritten; the new space is usable without reconnecting.
func TestOnlineResize(t *testing.T) {
	bed := newBedWith(t, blkback.Options{ResizeInterval: 20 * time.Millisecond})
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	f := connect(t, bed, d, blkfront.Options{})
	if err := os.Truncate(path, 2<<20); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.Refresh(); f.Disk.Sectors != 2<<20/512; f.Refresh() {
		if time.Now().After(deadline) {
			t.Fatalf("sectors still %d after growing the image", f.Disk.Sectors)
		}
		time.Sleep(10 * time.Millisecond)
	}
	do(t, f, blkif.OpWrite, (1<<20)/512+8, make([]byte, 4096))
	if st, _ := bed.Dom0.Read(d.BackendPath() + "/state"); st != "4" {
		t.Errorf("state %s after a resize, want 4", st)
	}
	closeFrontend(t, f)
}

// openFlags returns the open flags of this process's descriptor of path.
func openFlags(t *testing.T, path string) (int, bool) {
	t.Helper()
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, fd := range fds {
		if target, _ := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); target != path {
			continue
		}
		info, err := os.ReadFile(filepath.Join("/proc/self/fdinfo", fd.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				flags, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
				if err != nil {
					t.Fatal(err)
				}
				return int(flags), true
			}
		}
	}
	return 0, false
}

// The cache policy picks O_DIRECT or the page cache per disk, from the
// disk's key, the default (Options.Cache), or the storage; grant-copy
// moves the same data through blkdom's own buffers.
func TestCachePolicy(t *testing.T) {
	tests := []struct {
		name   string
		extra  map[string]string
		def    blkback.CachePolicy
		direct bool
		policy string // published in PolicyKey
	}{
		{"local storage: direct", nil, "", true, "direct"},
		{"direct-io-safe", map[string]string{"direct-io-safe": "1"}, "", true, "direct"},
		{"disk key buffered", map[string]string{"blkdom-cache": "buffered"}, "", false, "buffered"},
		{"default buffered", nil, blkback.CacheBuffered, false, "buffered"},
		{"disk key beats the default", map[string]string{"blkdom-cache": "direct"}, blkback.CacheBuffered, true, "direct"},
		{"grant-copy", map[string]string{"blkdom-cache": "grant-copy"}, "", true, "grant-copy"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var opts blkback.Options
			if tt.def != "" {
				opts.Cache = func() blkback.CachePolicy { return tt.def }
			}
			bed := newBedWith(t, opts)
			path, _ := newImage(t, 4<<20)
			disk := xensim.Disk{Frontend: 1, Devid: 51712, Params: path, Extra: tt.extra}
			f := connect(t, bed, disk, blkfront.Options{Persistent: i%2 == 0, IndirectSegments: 64})
			if p, err := bed.Dom0.Read(disk.BackendPath() + "/" + blkback.PolicyKey); p != tt.policy {
				t.Errorf("%s = %q (%v), want %q", blkback.PolicyKey, p, err, tt.policy)
			}
			flags, open := openFlags(t, path)
			if !open {
				t.Fatal("image not open while connected")
			}
			if direct := flags&syscall.O_DIRECT != 0; direct != tt.direct {
				t.Errorf("O_DIRECT %v, want %v", direct, tt.direct)
			}
			if err := workload(f, 8, 10, int64(i)); err != nil {
				t.Fatal(err)
			}
			closeFrontend(t, f)
		})
	}
}

// Every key the backend writes into a device's directory is one of
// ownKeys, the keys whose watch events the backend ignores: a key missing
// there costs each connected device a wasted look at every write of it.
// The stores are a file and a loop device (physical-device), the frontend
// negotiates everything.
func TestOwnKeysHoldEveryBackendKey(t *testing.T) {
	for _, store := range []string{"file", "block device"} {
		t.Run(store, func(t *testing.T) {
			bed := newBedWith(t, blkback.Options{MaxQueues: 2})
			path, _ := newImage(t, 8<<20)
			if store == "block device" {
				path = loopDevice(t, path)
			}
			d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
			f := connect(t, bed, d, blkfront.Options{Queues: 2, RingPageOrder: 2, Persistent: true, IndirectSegments: 64})
			defer closeFrontend(t, f)
			toolstack := map[string]bool{}
			for _, k := range []string{"frontend", "frontend-id", "online", "removable", "bootable", "state",
				"dev", "type", "mode", "device-type", "discard-enable", "params", "statistics"} {
				toolstack[k] = true
			}
			keys, err := bed.Dom0.Directory(d.BackendPath())
			if err != nil {
				t.Fatal(err)
			}
			own := 0
			for _, k := range keys {
				switch {
				case blkback.OwnKeys[k]:
					own++
				case !toolstack[k]:
					t.Errorf("the backend wrote %q, which ownKeys lacks", k)
				}
			}
			if own < 10 {
				t.Errorf("%d of the backend's own keys in %v; want 10 or more", own, keys)
			}
		})
	}
}
