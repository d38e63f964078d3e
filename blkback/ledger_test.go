package blkback

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"blkdom/gnttab"
)

// A successor serves again exactly what was taken and not answered where
// the frontend can see it, in ring order, and takes on after the last
// request taken; responses published out of order are no clue to that.
func TestLedgerResume(t *testing.T) {
	// step is a take ('t') of a ring position into a slot, or an answer
	// ('a') of a slot at a response position.
	type step struct {
		op   byte
		slot uint16
		pos  uint32
	}
	base := ^uint32(0) - 2 // positions wrap around 2^32
	for _, tc := range []struct {
		name     string
		steps    []step
		rspProd  uint32
		wantCons uint32
		wantRedo []uint16
	}{
		{"fresh", nil, 7, 7, nil},
		{"all answered", []step{{'t', 0, 0}, {'t', 1, 1}, {'a', 1, 0}, {'a', 0, 1}}, 2, 2, nil},
		// Request 2 finished first: its response took position 0, in
		// request 0's slot. Requests 0 and 1 are owed.
		{"out of order", []step{{'t', 3, 0}, {'t', 5, 1}, {'t', 4, 2}, {'a', 4, 0}}, 1, 3, []uint16{3, 5}},
		// Answered in the ring, killed before rsp_prod said so.
		{"unpublished response", []step{{'t', 0, 0}, {'t', 1, 1}, {'a', 0, 0}, {'a', 1, 1}}, 1, 2, []uint16{1}},
		{"wrap", []step{{'t', 2, base}, {'t', 0, base + 1}, {'t', 1, base + 2}, {'t', 3, base + 3},
			{'a', 1, base}, {'a', 2, base + 1}}, base + 2, base + 4, []uint16{0, 3}},
		// A slot reused: its earlier answer long published.
		{"reused slot", []step{{'t', 0, 0}, {'a', 0, 0}, {'t', 0, 1}, {'t', 1, 2}, {'a', 1, 1}}, 2, 3, []uint16{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := identity{port: 9, refs: []gnttab.Ref{8}, entrySize: 112, slots: 32}
			path := filepath.Join(t.TempDir(), "ledger")
			l, kept, err := openLedger(path, id, true)
			if err != nil || kept {
				t.Fatalf("first open: kept %v, %v", kept, err)
			}
			for _, s := range tc.steps {
				if s.op == 't' {
					l.took(s.slot, s.pos)
				} else {
					l.answering(s.slot, s.pos)
				}
			}
			l.keep = true
			if err := l.close(); err != nil {
				t.Fatal(err)
			}
			// The successor opens what the killed process left.
			l, kept, err = openLedger(path, id, true)
			if err != nil || !kept {
				t.Fatalf("reopen: kept %v, %v", kept, err)
			}
			defer l.close()
			cons, redo := l.resume(tc.rspProd, id.slots)
			if cons != tc.wantCons || !slices.Equal(redo, tc.wantRedo) {
				t.Errorf("resume(%d) = %d, %v; want %d, %v", tc.rspProd, cons, redo, tc.wantCons, tc.wantRedo)
			}
		})
	}
}

// A ledger is kept only for the ring it names, and only to adopt.
func TestLedgerIdentity(t *testing.T) {
	id := identity{port: 9, refs: []gnttab.Ref{8, 10}, entrySize: 112, slots: 64}
	other := id
	other.refs = []gnttab.Ref{8, 11}
	for _, tc := range []struct {
		name  string
		id    identity
		adopt bool
		kept  bool
	}{
		{"the same ring", id, true, true},
		{"another ring", other, true, false},
		{"a fresh connect", id, false, false},
	} {
		path := filepath.Join(t.TempDir(), "ledger")
		l, _, err := openLedger(path, id, false)
		if err != nil {
			t.Fatal(err)
		}
		l.took(1, 0)
		l.keep = true
		l.close()
		l, kept, err := openLedger(path, tc.id, tc.adopt)
		if err != nil {
			t.Fatal(err)
		}
		_, redo := l.resume(0, 64)
		if kept != tc.kept || kept != (len(redo) == 1) {
			t.Errorf("%s: kept %v, redo %v", tc.name, kept, redo)
		}
		l.close()
	}
}

// BenchmarkLedger is the ledger's cost per request, alone: its record of
// a take and of an answer (three atomic stores and two), in memory (no
// StateDir) and in a file mapped shared on a tmpfs (/dev/shm, as
// /run/blkdom is), and allocates nothing.
func BenchmarkLedger(b *testing.B) {
	dirs := map[string]string{"memory": "", "tmpfs": ""}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "blkdom-bench")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(d) })
		dirs["tmpfs"] = d
	} else {
		delete(dirs, "tmpfs")
	}
	for _, where := range []string{"memory", "tmpfs"} {
		dir, ok := dirs[where]
		if !ok {
			continue
		}
		b.Run(where, func(b *testing.B) {
			path := ""
			if dir != "" {
				path = filepath.Join(dir, "vbd-1-51712-0")
			}
			l, _, err := openLedger(path, identity{refs: []gnttab.Ref{8}, entrySize: 112, slots: 32}, false)
			if err != nil {
				b.Fatal(err)
			}
			defer l.close()
			b.ReportAllocs()
			var pos uint32
			for b.Loop() {
				i := uint16(pos % 32)
				l.took(i, pos)
				l.answering(i, pos)
				pos++
			}
		})
	}
}
