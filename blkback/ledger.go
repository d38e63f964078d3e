package blkback

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"blkdom/evtchn"
	"blkdom/gnttab"
)

// A ledger is a ring's record of the requests it has taken and not yet
// answered, kept where it outlives the process: a file on a tmpfs
// (Options.StateDir, /run/blkdom for blkdom serve), mapped shared. It is
// what lets a new blkdom adopt a connected ring after kill -9 without
// losing a request.
//
// The shared ring alone cannot say what was in flight. Responses go into
// the ring in completion order, not in request order, and each response
// overwrites a request slot: when request 2 finishes before request 0,
// its response lands in request 0's slot, and a successor that took
// rsp_prod as "everything before was answered" would answer 2 twice (Linux
// blkfront then fails the disk) and never answer 0 (a hung guest). So
// each ring slot of the backend (slot.raw, its private copy of a request)
// lives in the ledger, with the ring position it was taken from and,
// once answered, the response position it was answered in:
//
//	take     copy the request in, pos = req_cons, state = taken,
//	         then the ledger's req_cons = pos+1
//	respond  rspPos = rsp_prod_pvt, state = answered, then write the
//	         response into the ring (push publishes it later, and
//	         only then is the slot, and so its entry, taken again:
//	         the entry is all that says the answer is unseen)
//
// A successor (resume) answers again every entry taken and not answered,
// or answered at a position the frontend was never shown (rspPos at or
// beyond the ring's rsp_prod), in ring order, and goes on taking from
// the ledger's req_cons. Serving a request again is safe: the frontend
// has no answer for it, so it still owns the request's pages untouched;
// reads and writes are idempotent, so are flushes and discards, and a
// barrier is the last request its ring took (nothing is taken behind
// one), so serving the entries in ring order keeps its order.
//
// A device connecting afresh starts its ledgers empty. Without a
// StateDir the ledger lives in the process's memory: the same code, no
// survival.
type ledger struct {
	mem  []byte
	head *ledgerHead
	// stride is the bytes per entry: its meta and a ring slot's copy.
	stride int
	path   string // the file, or "" in memory
	// keep: close leaves the file for a successor (ErrAbandon).
	keep bool
}

// Entry states.
const (
	entryFree     = iota // never used since the ledger began
	entryTaken           // taken off the ring, not answered
	entryAnswered        // answered at rspPos
)

// ledgerMagic marks a ledger file (and its layout's version).
const ledgerMagic = 0x626c6b31 // "blk1"

// ledgerRefs is the most ring pages a ledger records as the ring's
// identity: 2^maxRingPageOrder.
const ledgerRefs = 1 << maxRingPageOrder

// identity is what names a ring: a ledger that does not carry it is from
// another connection.
type identity struct {
	port      evtchn.Port
	refs      []gnttab.Ref
	entrySize int
	slots     uint32
}

// openLedger opens the ledger of the ring id at path (in memory when path
// is empty). With adopt, a ledger left there for this same ring is kept,
// for resume; otherwise, or when it is another ring's, it starts empty.
func openLedger(path string, id identity, adopt bool) (*ledger, bool, error) {
	stride := entryMeta + (id.entrySize+7)&^7
	size := ledgerHeadSize + int(id.slots)*stride
	l := &ledger{stride: stride, path: path}
	var fresh bool
	if path == "" {
		l.mem = make([]byte, size)
		fresh = true
	} else {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, false, err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return nil, false, err
		}
		if st.Size() != int64(size) {
			fresh = true
			if err := f.Truncate(0); err != nil {
				return nil, false, err
			}
			if err := f.Truncate(int64(size)); err != nil {
				return nil, false, err
			}
		}
		l.mem, err = unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			os.Remove(path)
			return nil, false, fmt.Errorf("mapping the ledger %s: %w", path, err)
		}
	}
	l.head = ledgerHeadOf(l.mem)
	kept := adopt && !fresh && l.head.is(id)
	if !kept {
		clear(l.mem)
		l.head.set(id)
	}
	return l, kept, nil
}

// raw is entry i's copy of a ring slot: the ring's slot.raw.
func (l *ledger) raw(i uint16, entrySize int) []byte {
	off := ledgerHeadSize + int(i)*l.stride + entryMeta
	return l.mem[off : off+entrySize : off+entrySize]
}

// took records that entry i holds the request taken at ring position pos.
func (l *ledger) took(i uint16, pos uint32) {
	m := l.meta(i)
	m.pos.Store(pos)
	m.state.Store(entryTaken)
	l.head.reqCons.Store(pos + 1)
}

// answering records that entry i is answered at response position pos;
// it comes before the response is written.
func (l *ledger) answering(i uint16, pos uint32) {
	m := l.meta(i)
	m.rspPos.Store(pos)
	m.state.Store(entryAnswered)
}

// resume says where a ring adopted from a predecessor goes on, given the
// rsp_prod its frontend has seen: the next ring position to take, and the
// entries to serve again, in ring order (see ledger). A ledger that
// records nothing resumes at rspProd: every request taken was answered.
func (l *ledger) resume(rspProd, slots uint32) (reqCons uint32, redo []uint16) {
	reqCons = rspProd
	// later moves reqCons to c if c lies ahead of it within a ring's
	// reach of rspProd: a request there was taken.
	later := func(c uint32) {
		if int32(c-reqCons) > 0 && c-rspProd <= slots {
			reqCons = c
		}
	}
	later(l.head.reqCons.Load())
	for i := range uint16(slots) {
		m := l.meta(i)
		switch m.state.Load() {
		case entryTaken:
		case entryAnswered:
			if int32(rspProd-m.rspPos.Load()) > 0 {
				continue // the frontend has its answer
			}
		default:
			continue
		}
		redo = append(redo, i)
		later(m.pos.Load() + 1)
	}
	slices.SortFunc(redo, func(a, b uint16) int {
		return int(int32(l.meta(a).pos.Load() - l.meta(b).pos.Load()))
	})
	return reqCons, redo
}

// close unmaps the ledger and removes its file: the ring is released in
// order, every request answered.
func (l *ledger) close() error {
	if l.path == "" {
		return nil
	}
	err := unix.Munmap(l.mem)
	l.mem, l.head = nil, nil
	if l.keep {
		return err
	}
	if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}

// sweepLedgers removes the ledgers in Options.StateDir of devices that are
// no longer in xenstore (base/<frontend domain>/<devid>): devices removed,
// or domains destroyed, while no blkdom ran. Serve calls it before it
// watches base, while this backend has no device: the files are listed
// before xenstore is read, so a ledger made after the listing (a device
// new since) is not among them. A ledger of a device still there stays,
// for its adoption or a fresh connect. Other files are left alone.
func (b *Backend) sweepLedgers() {
	dir := b.opts.StateDir
	if dir == "" {
		return
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		b.log.Warn("ledgers not swept", "dir", dir, "err", err)
		return
	}
	devices := map[string]bool{} // "<dom>-<devid>"
	doms, err := b.xs.Directory(b.base)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		b.log.Warn("ledgers not swept", "dir", dir, "err", err)
		return
	}
	for _, dom := range doms {
		ids, err := b.xs.Directory(b.base + "/" + dom)
		if err != nil && !errors.Is(err, unix.ENOENT) {
			b.log.Warn("ledgers not swept", "dir", dir, "err", err)
			return
		}
		for _, id := range ids {
			devices[dom+"-"+id] = true
		}
	}
	var removed []string
	for _, e := range entries {
		dev, ok := ledgerDevice(e.Name())
		if !ok || devices[dev] {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			b.log.Warn("stale ledger", "file", e.Name(), "err", err)
			continue
		}
		removed = append(removed, e.Name())
	}
	if len(removed) > 0 {
		b.log.Info("removed the ledgers of devices gone", "files", strings.Join(removed, " "))
	}
}

// ledgerDevice is "<dom>-<devid>" of a ledger file's name
// (device.ledgerPath: vbd-<dom>-<devid>-<queue>), false for another name.
func ledgerDevice(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, "vbd-")
	if !ok {
		return "", false
	}
	parts := strings.Split(rest, "-")
	if len(parts) != 3 {
		return "", false
	}
	for _, p := range parts {
		if _, err := strconv.ParseUint(p, 10, 32); err != nil {
			return "", false
		}
	}
	return parts[0] + "-" + parts[1], true
}
