package blkback_test

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/xensim"
)

// Storage faults under a connected guest: real file systems, loop devices
// and device-mapper tables that fail, fill up, go away or stall under the
// real backend, with the reference frontend as the guest. Each scenario
// runs on both I/O engines and with O_DIRECT and the page cache.

// faultChunk is what one write moves: 8 pages, a direct request.
const faultChunk = 32 << 10

// chunkData is the content of chunk c: its own, so that a chunk lost,
// misplaced or torn differs from it.
func chunkData(c int) []byte {
	b := make([]byte, faultChunk)
	rand.New(rand.NewSource(int64(c) + 1)).Read(b)
	return b
}

// faultStore is one scenario's storage: the path the backend serves, the
// file that holds its data afterwards, and the fault to turn on.
type faultStore struct {
	serve, backing string
	fault          func(t *testing.T) // nil: the storage fails by itself (a file system fills up)
	heal           func(t *testing.T) // nil: the fault stays
}

// faultScenario is a storage fault and what the guest must see while it
// is on: writes "ok" (every one acknowledged), "err" (every one failed),
// "fill" (acknowledged until the store is full, then failed) or "any";
// reads of chunks written before the fault "ok" or "err". Through the
// page cache a block device takes writes into memory and fails them at
// the flush: bufferedWrites, when set, is what the writes get then.
type faultScenario struct {
	name           string
	needs          string // "root", "loop", "dm": what must be there, else it skips
	setup          func(t *testing.T, dir string) faultStore
	chunks         int // chunks written while the fault is on
	writes         string
	bufferedWrites string
	reads          string
	directOnly     bool          // not run through the page cache
	slow           time.Duration // the least time a fault-time write must take
}

var faultScenarios = []faultScenario{
	{
		// A sparse 4 MiB image on a 1 MiB tmpfs: writes into holes fail
		// with ENOSPC once the file system is full.
		name: "file system full (ENOSPC)", needs: "root", chunks: 48, writes: "fill", reads: "ok",
		setup: func(t *testing.T, dir string) faultStore {
			small := smallTmpfs(t, dir, "1m")
			return faultStore{serve: sparseFile(t, small, 4<<20)}
		},
	},
	{
		// The image's name unlinked under the guest: the open file serves
		// on (as Linux's loop and blkback on a file do); a second link lets
		// the test read it afterwards.
		name: "image deleted", chunks: 8, writes: "ok", reads: "ok",
		setup: func(t *testing.T, dir string) faultStore {
			img := sparseFile(t, dir, 4<<20)
			keep := img + ".kept"
			if err := os.Link(img, keep); err != nil {
				t.Fatal(err)
			}
			return faultStore{serve: img, backing: keep, fault: func(t *testing.T) {
				if err := os.Remove(img); err != nil {
					t.Fatal(err)
				}
			}}
		},
	},
	{
		// A loop device whose backing file is on a 1 MiB tmpfs: the
		// device's writes fail (the loop driver's ENOSPC) once it is full;
		// through the page cache, its writeback and so the flushes fail.
		name: "block device fills up (loop on a full tmpfs)", needs: "loop", chunks: 48, writes: "fill",
		bufferedWrites: "ok", reads: "ok",
		setup: func(t *testing.T, dir string) faultStore {
			small := smallTmpfs(t, dir, "1m")
			back := sparseFile(t, small, 4<<20)
			return faultStore{serve: loopDevice(t, back), backing: back}
		},
	},
	{
		// losetup -d of the served loop device: the kernel only marks it
		// to go at its last close, and it serves on meanwhile.
		name: "loop device detached", needs: "loop", chunks: 8, writes: "ok", reads: "ok",
		setup: func(t *testing.T, dir string) faultStore {
			back := sparseFile(t, dir, 4<<20)
			dev := loopDevice(t, back)
			return faultStore{serve: dev, backing: back, fault: func(t *testing.T) {
				run(t, "losetup", "-d", dev)
			}}
		},
	},
	{
		name: "dm error target (EIO on reads and writes)", needs: "dm", directOnly: true, chunks: 8, writes: "err", reads: "err",
		setup: func(t *testing.T, dir string) faultStore { return dmStore(t, dir, "error") },
	},
	{
		// flakey with error_writes: reads pass, writes fail with EIO.
		name: "dm flakey error_writes (EIO on writes)", needs: "dm", directOnly: true, chunks: 8, writes: "err", reads: "ok",
		setup: func(t *testing.T, dir string) faultStore { return dmStore(t, dir, "error_writes") },
	},
	{
		name: "dm delay 200 ms (a slow disk)", needs: "dm", directOnly: true, chunks: 4, writes: "ok", reads: "ok", slow: 200 * time.Millisecond,
		setup: func(t *testing.T, dir string) faultStore { return dmStore(t, dir, "delay") },
	},
	{
		// dmsetup remove --force under the open device: its table becomes
		// error, and it goes at the last close.
		name: "dm device removed", needs: "dm", directOnly: true, chunks: 8, writes: "err", reads: "err",
		setup: func(t *testing.T, dir string) faultStore { return dmStore(t, dir, "remove") },
	},
}

func TestStorageFaults(t *testing.T) {
	for _, sc := range faultScenarios {
		for _, engine := range blkback.Engines {
			for _, cache := range []blkback.CachePolicy{blkback.CacheDirect, blkback.CacheBuffered} {
				if sc.directOnly && cache != blkback.CacheDirect {
					continue
				}
				t.Run(fmt.Sprintf("%s/%s/%s", sc.name, engine, cache), func(t *testing.T) {
					if why := missing(sc.needs); why != "" {
						t.Skipf("%s: %s (the driver domain's e2e scenario TestDriverDomainFaults covers device-mapper faults)", sc.needs, why)
					}
					runFault(t, sc, engine, cache)
				})
			}
		}
	}
}

// faultGuest is the guest's side of a scenario: what it wrote, what was
// acknowledged, and the model of what must be on the disk.
type faultGuest struct {
	t       *testing.T
	f       *blkfront.Frontend
	status  map[int]int16 // each written chunk's answer
	pending []int         // acknowledged, no flush acknowledged since
	durable []int         // acknowledged before an acknowledged flush
}

// batch writes chunks [first, first+n) four at a time in flight, and
// flushes after each four; it returns the statuses in chunk order and the
// longest write.
func (g *faultGuest) batch(first, n int) ([]int16, time.Duration) {
	sts := make([]int16, n)
	var longest time.Duration
	for at := 0; at < n; at += 4 {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i := at; i < min(at+4, n); i++ {
			wg.Go(func() {
				t0 := time.Now()
				st, err := g.f.Do(blkif.OpWrite, uint64((first+i)*faultChunk/512), chunkData(first+i))
				if err != nil {
					g.t.Errorf("chunk %d: %v", first+i, err) // no answer: a hang
				}
				mu.Lock()
				sts[i] = st
				longest = max(longest, time.Since(t0))
				mu.Unlock()
			})
		}
		wg.Wait()
		for i := at; i < min(at+4, n); i++ {
			g.status[first+i] = sts[i]
			switch sts[i] {
			case blkif.StatusOK:
				g.pending = append(g.pending, first+i)
			case blkif.StatusError:
			default:
				g.t.Errorf("chunk %d: status %d, want OK or ERROR", first+i, sts[i])
			}
		}
		st, err := g.f.Do(blkif.OpFlushDiskcache, 0, nil)
		if err != nil {
			g.t.Fatalf("flush: %v", err)
		}
		if st == blkif.StatusOK {
			g.durable = append(g.durable, g.pending...)
			g.pending = g.pending[:0]
		}
	}
	return sts, longest
}

// read reads chunk c back: its status, and whether it holds chunk c.
func (g *faultGuest) read(c int) (int16, bool) {
	buf := make([]byte, faultChunk)
	st, err := g.f.Do(blkif.OpRead, uint64(c*faultChunk/512), buf)
	if err != nil {
		g.t.Fatalf("read chunk %d: %v", c, err)
	}
	return st, bytes.Equal(buf, chunkData(c))
}

func runFault(t *testing.T, sc faultScenario, engine string, cache blkback.CachePolicy) {
	dir := t.TempDir()
	store := sc.setup(t, dir) // before the bed: its cleanups run after the bed's
	if store.backing == "" {
		store.backing = store.serve
	}
	logged := &lineLog{t: t}
	bed := newBedWith(t, blkback.Options{Engine: engine, Cache: func() blkback.CachePolicy { return cache },
		Logger: testLogger(t, logged)})
	fopts := blkfront.Options{RequestTimeout: 20 * time.Second}
	g := &faultGuest{t: t, status: map[int]int16{},
		f: connect(t, bed, xensim.Disk{Frontend: 1, Devid: 51712, Params: store.serve}, fopts)}
	otherPath, _ := newImage(t, 1<<20)
	other := connect(t, bed, xensim.Disk{Frontend: 2, Devid: 51712, Params: otherPath}, fopts)
	otherServes := func(when string) {
		buf, got := chunkData(99)[:4096], make([]byte, 4096)
		do(t, other, blkif.OpWrite, 8, buf)
		do(t, other, blkif.OpFlushDiskcache, 0, nil)
		do(t, other, blkif.OpRead, 8, got)
		if !bytes.Equal(buf, got) {
			t.Errorf("%s: the other disk read back other data", when)
		}
	}

	// Healthy: chunks 0 to 3, all acknowledged.
	if sts, _ := g.batch(0, 4); !allStatus(sts, blkif.StatusOK) {
		t.Fatalf("before the fault: statuses %v", sts)
	}
	if store.fault != nil {
		store.fault(t)
	}
	sts, longest := g.batch(4, sc.chunks)
	ok, failed := count(sts)
	t.Logf("during the fault: %d writes acknowledged, %d failed, the longest took %v", ok, failed, longest.Round(time.Millisecond))
	writes := sc.writes
	if cache == blkback.CacheBuffered && sc.bufferedWrites != "" {
		writes = sc.bufferedWrites
	}
	if !writesAre(sts, writes) {
		t.Errorf("statuses %v, want %s", sts, writes)
	}
	if sc.slow > 0 && longest < sc.slow {
		t.Errorf("the longest write took %v on a disk delayed by %v", longest, sc.slow)
	}
	st, same := g.read(0)
	switch {
	case sc.reads == "ok" && (st != blkif.StatusOK || !same):
		t.Errorf("read-back of chunk 0: status %d, same data %v; want OK with the data", st, same)
	case sc.reads == "err" && st != blkif.StatusError:
		t.Errorf("read-back of chunk 0: status %d, want ERROR", st)
	}
	otherServes("during the fault")
	// The guest goes on: it rewrites chunks 0 to 3, which the store
	// has room for, and flushes. That flush's answer covers every write
	// acknowledged before it, those the fault took too.
	if store.heal != nil {
		store.heal(t)
	}
	after := "ok"
	if sc.writes == "err" && store.heal == nil {
		after = "err"
	}
	if sts, _ := g.batch(0, 4); !writesAre(sts, after) {
		t.Errorf("after the fault: statuses %v, want %s", sts, after)
	}
	if s, err := g.f.BackendState(); err != nil || s != blkif.StateConnected {
		t.Errorf("the faulty disk's backend is in state %d (%v), want Connected", s, err)
	}
	closeFrontend(t, g.f)
	closeFrontend(t, other)

	// Every chunk acknowledged before an acknowledged flush is there,
	// byte for byte; no chunk answered ERROR is all there.
	img, err := os.ReadFile(store.backing)
	if err != nil {
		t.Fatal(err)
	}
	chunkAt := func(c int) []byte { return img[c*faultChunk : (c+1)*faultChunk] }
	lost := 0
	for _, c := range g.durable {
		if !bytes.Equal(chunkAt(c), chunkData(c)) {
			lost++
			t.Errorf("chunk %d was acknowledged before an acknowledged flush and is not on the disk", c)
		}
	}
	answeredErr := 0
	for c, st := range g.status {
		if st == blkif.StatusError {
			answeredErr++
			if bytes.Equal(chunkAt(c), chunkData(c)) {
				t.Errorf("chunk %d was answered ERROR, yet all of it is on the disk", c)
			}
		}
	}
	// The operator hears of failed requests, not only the guest.
	if warned := logged.count(`level=WARN msg="request failed`); answeredErr > 0 && warned == 0 {
		t.Errorf("%d writes answered ERROR, no request failure logged", answeredErr)
	}
	t.Logf("%d chunks acknowledged before an acknowledged flush, %d lost", len(g.durable), lost)
}

// writesAre says whether the statuses of writes issued four at a time are
// what want says (see faultScenario).
func writesAre(sts []int16, want string) bool {
	ok, failed := count(sts)
	switch want {
	case "ok":
		return failed == 0
	case "err":
		return ok == 0
	case "fill":
		// Within the four in flight when the store fills, any may get
		// the last room; none after.
		first := slices.Index(sts, blkif.StatusError)
		return ok > 0 && failed > 0 && allStatus(sts[min(len(sts), first/4*4+4):], blkif.StatusError)
	}
	return true
}

func allStatus(sts []int16, want int16) bool {
	for _, s := range sts {
		if s != want {
			return false
		}
	}
	return true
}

func count(sts []int16) (ok, failed int) {
	for _, s := range sts {
		if s == blkif.StatusOK {
			ok++
		} else {
			failed++
		}
	}
	return ok, failed
}

// missing says why what a scenario needs is not here, or "".
func missing(needs string) string {
	if needs == "" {
		return ""
	}
	if os.Geteuid() != 0 {
		return "needs root"
	}
	switch needs {
	case "loop":
		if _, err := os.Stat("/dev/loop-control"); err != nil {
			return "no loop devices: " + err.Error()
		}
	case "dm":
		if _, err := exec.LookPath("dmsetup"); err != nil {
			return "no dmsetup (Debian's dmsetup package)"
		}
		if out, err := exec.Command("dmsetup", "version").CombinedOutput(); err != nil {
			return "the kernel has no device-mapper: " + strings.Join(strings.Fields(string(out)), " ")
		}
		for _, target := range []string{"flakey", "delay"} {
			exec.Command("modprobe", "dm-"+target).Run()
			if out, _ := exec.Command("dmsetup", "targets").Output(); !strings.Contains(string(out), target) {
				return "no dm-" + target + " target"
			}
		}
	}
	return ""
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// smallTmpfs mounts a tmpfs of size under dir, unmounted at the end.
func smallTmpfs(t *testing.T, dir, size string) string {
	t.Helper()
	mnt := filepath.Join(dir, "small")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs (root needed): %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Error(err)
		}
	})
	return mnt
}

// sparseFile makes an empty sparse file of size bytes in dir.
func sparseFile(t *testing.T, dir string, size int64) string {
	t.Helper()
	path := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	return path
}

// loopDevice attaches file to a free loop device, detached at the end.
func loopDevice(t *testing.T, file string) string {
	t.Helper()
	dev := run(t, "losetup", "-f", "--show", file)
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// dmStore is a 4 MiB device-mapper device over a loop device, linear at
// first; its fault is the table kind: error, error_writes (flakey: up
// 0 s, down 1 h, writes failing), delay (200 ms), or remove (dmsetup
// remove --force).
func dmStore(t *testing.T, dir, kind string) faultStore {
	t.Helper()
	back := sparseFile(t, dir, 4<<20)
	loop := loopDevice(t, back)
	name := fmt.Sprintf("blkdom-test-%d", os.Getpid())
	sectors := 4 << 20 >> 9
	linear := fmt.Sprintf("0 %d linear %s 0", sectors, loop)
	run(t, "dmsetup", "create", name, "--table", linear)
	t.Cleanup(func() { exec.Command("dmsetup", "remove", "--force", name).Run() })
	dev := "/dev/mapper/" + name
	load := func(table string) func(t *testing.T) {
		return func(t *testing.T) {
			run(t, "dmsetup", "suspend", name)
			run(t, "dmsetup", "load", name, "--table", table)
			run(t, "dmsetup", "resume", name)
		}
	}
	s := faultStore{serve: dev, backing: back}
	switch kind {
	case "error":
		s.fault, s.heal = load(fmt.Sprintf("0 %d error", sectors)), load(linear)
	case "error_writes":
		s.fault = load(fmt.Sprintf("0 %d flakey %s 0 0 3600 1 error_writes", sectors, loop))
		s.heal = load(linear)
	case "delay":
		s.fault, s.heal = load(fmt.Sprintf("0 %d delay %s 0 200", sectors, loop)), load(linear)
	case "remove":
		s.fault = func(t *testing.T) {
			// Busy: the table becomes error and the removal is deferred
			// to the last close.
			exec.Command("dmsetup", "remove", "--force", "--deferred", name).Run()
			if table := run(t, "dmsetup", "table", name); !strings.Contains(table, "error") {
				t.Fatalf("after dmsetup remove --force: table %q", table)
			}
		}
	}
	return s
}
