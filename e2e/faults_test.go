package e2e

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// faultPhase is one phase of TestDriverDomainFaults: the table dom0 gives
// the fault disk first ("-" leaves it), the chunks the guest writes, and
// what the guest must see.
type faultPhase struct {
	table  string
	fault  bool   // a fault, counted in fault_scenarios; else a control
	disk   string // the guest's disk written
	first  int    // first chunk
	count  int    // chunks written
	writes string // "ok": all acknowledged; "err": all failed; "both": some of each; "any"
	read   string // the read-back of chunk first: "ok" (and the same data), "err" or "any"
}

// faultPhases: the fault disk (guest xvda) healthy, failing every I/O,
// healthy again, flaky, slow, and removed; and a disk whose file system
// fills up (xvdb: a 64 MiB sparse image on a 12 MiB ext4). The guest's
// xvdc, another image on that full file system, must serve in every
// phase.
var faultPhases = []faultPhase{
	{table: "linear", disk: "xvda", first: 0, count: 8, writes: "ok", read: "ok"},
	{table: "error", fault: true, disk: "xvda", first: 8, count: 8, writes: "err", read: "err"},
	{table: "linear", disk: "xvda", first: 16, count: 8, writes: "ok", read: "ok"},
	{table: "flakey", fault: true, disk: "xvda", first: 24, count: 16, writes: "any", read: "any"},
	{table: "delay", fault: true, disk: "xvda", first: 40, count: 4, writes: "ok", read: "ok"},
	{table: "-", fault: true, disk: "xvdb", first: 0, count: 64, writes: "both", read: "ok"},
	{table: "removed", fault: true, disk: "xvda", first: 44, count: 4, writes: "err", read: "err"},
}

// faultOther is the guest's disk with no fault.
const faultOther = "xvdc"

// faultLine is one of the guest's fault scenario lines: fw (a write of a
// chunk), ff (a flush), fr (the read-back), fo (the other disk).
var faultLine = regexp.MustCompile(`@@GUEST (fw|ff|fr|fo) (\d+) (xvd[a-z]+) (\S+)(?: (\S+))?@@`)

// faultLog is what the guest reported, in order, and the model built from
// it: every chunk whose write was acknowledged before a flush of its disk
// was acknowledged must be on that disk.
type faultLog struct {
	pending map[string][]int // acknowledged writes no acknowledged flush has covered yet
	durable map[string][]int // chunks that must be on the disk
}

// phaseResult is one phase's counts.
type phaseResult struct {
	ok, err, flushOK, flushErr int
	read, readData, other      string
}

// add takes one phase's lines (in the order the guest wrote them) into the
// model and counts them.
func (l *faultLog) add(out string, n int) (phaseResult, error) {
	if l.pending == nil {
		l.pending, l.durable = map[string][]int{}, map[string][]int{}
	}
	var r phaseResult
	for _, m := range faultLine.FindAllStringSubmatch(out, -1) {
		if p, _ := strconv.Atoi(m[2]); p != n {
			return r, fmt.Errorf("a line of phase %d in phase %d's output: %s", p, n, m[0])
		}
		disk, v := m[3], m[4]
		switch m[1] {
		case "fw":
			c, err := strconv.Atoi(v)
			if err != nil || m[5] == "" {
				return r, fmt.Errorf("bad write line %q", m[0])
			}
			if m[5] == "ok" {
				r.ok++
				l.pending[disk] = append(l.pending[disk], c)
			} else {
				r.err++
			}
		case "ff":
			if v == "ok" {
				r.flushOK++
				l.durable[disk] = append(l.durable[disk], l.pending[disk]...)
				l.pending[disk] = nil
			} else {
				r.flushErr++
			}
		case "fr":
			r.read, r.readData = v, m[5]
		case "fo":
			r.other = v
		}
	}
	if r.read == "" || r.other == "" {
		return r, fmt.Errorf("phase %d: no read-back or other-disk line", n)
	}
	return r, nil
}

// check says what in r the phase p does not allow.
func (p faultPhase) check(r phaseResult) []string {
	var bad []string
	switch {
	case r.ok+r.err != p.count:
		bad = append(bad, fmt.Sprintf("%d writes reported, want %d", r.ok+r.err, p.count))
	case p.writes == "ok" && r.err > 0, p.writes == "err" && r.ok > 0,
		p.writes == "both" && (r.ok == 0 || r.err == 0):
		bad = append(bad, fmt.Sprintf("%d writes acknowledged and %d failed, want %s", r.ok, r.err, p.writes))
	}
	switch {
	case p.read == "ok" && (r.read != "ok" || r.readData != "same"):
		bad = append(bad, fmt.Sprintf("read-back %s (%s), want ok with the data written", r.read, r.readData))
	case p.read == "err" && r.read != "err":
		bad = append(bad, fmt.Sprintf("read-back %s, want an error", r.read))
	}
	if r.other != "ok" {
		bad = append(bad, fmt.Sprintf("the other disk %s: %s", faultOther, r.other))
	}
	return bad
}

// chunks lists the chunks of disk that must be there, sorted, once each.
func (l *faultLog) chunks(disk string) []int {
	seen := map[int]bool{}
	var cs []int
	for _, c := range l.durable[disk] {
		if !seen[c] {
			seen[c] = true
			cs = append(cs, c)
		}
	}
	sort.Ints(cs)
	return cs
}

// lost counts the chunks fault_verify found differing from their model,
// and how many it compared.
func lost(out string) (differ, compared int) {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 4 && f[0] == "fault-chunk" {
			compared++
			if f[3] != "same" {
				differ++
			}
		}
	}
	return differ, compared
}

func joinInts(cs []int) string {
	s := make([]string, len(cs))
	for i, c := range cs {
		s[i] = strconv.Itoa(c)
	}
	return strings.Join(s, " ")
}

// TestDriverDomainFaults is storage failing under a guest served by a
// driver domain. Dom0 makes a device-mapper device over a loop device and
// gives it to a driver domain booted from blkdom's initramfs, with an
// ext4 image holding a sparse image larger than the file system and a
// fully written one. The driver domain's blkdom serves the guest the dm
// device (xvda), the sparse image (xvdb) and the written one (xvdc). In
// phases cued through xenstore, dom0 switches the dm table (error,
// flakey, delay, forced removal) and the guest writes known chunks with
// O_DIRECT, flushing after every fourth, and fills the small file system
// through xvdb (ENOSPC in blkdom). The guest must get errors exactly
// where the phase fails I/O, xvdc must serve throughout, and afterwards
// every chunk whose write the guest saw acknowledged before an
// acknowledged flush must be on the disk, byte for byte
// (fault_lost_acked_writes, 0).
//
// The faults are made in dom0, not in the driver domain: blkdom is the
// driver domain's PID 1 and has no dmsetup, and what blkdom meets is the
// same either way, a block device (there the driver domain's xen-blkfront
// over dom0's blkback over dm) whose reads, writes and flushes fail or
// stall.
func TestDriverDomainFaults(t *testing.T) {
	s := start(t)
	if built.ddErr != nil {
		t.Fatalf("no driver domain image: %v", built.ddErr)
	}
	img, fs := work+"/fault.img", work+"/faultfs.img"
	s.step(60*time.Second, "kernel_backend")
	s.cleanup(60*time.Second, "fault_teardown")
	s.step(120*time.Second, "fault_images %s %s", img, fs)
	s.cleanup(90*time.Second, "xl destroy blkfdd 2>/dev/null; true")
	s.step(180*time.Second, "dd_create blkfdd /boot/dd.cpio.gz /dev/mapper/blkfault %s", fs)
	s.step(250*time.Second, "dd_wait blkfdd '%s' 240", ddReady)
	s.guestStartWith("gfault", guestConfig{args: "e2e.faults=1"},
		"backend=blkfdd,format=raw,vdev=xvda,access=rw,target=/dev/xvdb",
		"backend=blkfdd,format=raw,vdev=xvdb,access=rw,target=/mnt/images/full.img",
		"backend=blkfdd,format=raw,vdev=xvdc,access=rw,target=/mnt/images/good.img")

	var log faultLog
	scenarios := 0
	for i, p := range faultPhases {
		n := i + 1
		out := s.step(260*time.Second, "fault_phase gfault %d %s '%s %d %d %s'",
			n, p.table, p.disk, p.first, p.count, faultOther)
		r, err := log.add(out, n)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("phase %d (%s on %s): %d writes acknowledged, %d failed; flushes %d ok, %d failed; read-back %s %s; %s %s",
			n, p.table, p.disk, r.ok, r.err, r.flushOK, r.flushErr, r.read, r.readData, faultOther, r.other)
		for _, b := range p.check(r) {
			t.Errorf("phase %d (%s on %s): %s", n, p.table, p.disk, b)
		}
		if p.fault {
			scenarios++
		}
	}
	s.step(90*time.Second, "fault_end gfault %d", len(faultPhases)+1)
	s.step(120*time.Second, "domain_destroy gfault")
	// The driver domain must stop in order; its blkdom may log the fault
	// disk's errors, but nothing may panic.
	s.step(200*time.Second, "dd_shutdown blkfdd 180 'Kernel panic|panic:|Attempted to kill init'")

	a, b := log.chunks("xvda"), log.chunks("xvdb")
	outA := s.step(300*time.Second, "fault_verify %s xvda %s", img, joinInts(a))
	outB := s.step(300*time.Second, "fault_verify_fs %s full.img xvdb %s", fs, joinInts(b))
	lostA, cmpA := lost(outA)
	lostB, cmpB := lost(outB)
	if cmpA != len(a) || cmpB != len(b) {
		t.Errorf("compared %d and %d chunks, want %d and %d", cmpA, cmpB, len(a), len(b))
	}
	t.Logf("acknowledged before an acknowledged flush: %d chunks of xvda (%d differ), %d of xvdb (%d differ)",
		len(a), lostA, len(b), lostB)
	metric(t, "fault_lost_acked_writes", strconv.Itoa(lostA+lostB))
	metric(t, "fault_acked_writes_checked", strconv.Itoa(len(a)+len(b)))
	metric(t, "fault_scenarios", strconv.Itoa(scenarios))
	if lostA+lostB > 0 {
		t.Errorf("%d acknowledged writes lost:\n%s\n%s", lostA+lostB, outA, outB)
	}
}

// TestFaultModel checks the model on a made-up guest report: writes count
// once a later flush of their disk is acknowledged, not before, and a
// failed flush covers nothing.
func TestFaultModel(t *testing.T) {
	var l faultLog
	out := `@@GUEST fw 1 xvda 0 ok@@
@@GUEST fw 1 xvda 1 err@@
@@GUEST fw 1 xvdb 5 ok@@
@@GUEST ff 1 xvda ok@@
@@GUEST fw 1 xvda 2 ok@@
@@GUEST ff 1 xvda err@@
@@GUEST fw 1 xvda 3 ok@@
@@GUEST fr 1 xvda ok same@@
@@GUEST fo 1 xvdc ok@@`
	r, err := l.add(out, 1)
	if err != nil {
		t.Fatal(err)
	}
	if want := (phaseResult{ok: 4, err: 1, flushOK: 1, flushErr: 1, read: "ok", readData: "same", other: "ok"}); r != want {
		t.Errorf("phase 1: %+v, want %+v", r, want)
	}
	if got := joinInts(l.chunks("xvda")); got != "0" {
		t.Errorf("xvda after phase 1: %q must be there, want \"0\"", got)
	}
	if _, err := l.add("@@GUEST ff 2 xvda ok@@\n@@GUEST fr 2 xvda err other@@\n@@GUEST fo 2 xvdc fail@@", 2); err != nil {
		t.Fatal(err)
	}
	if got := joinInts(l.chunks("xvda")); got != "0 2 3" {
		t.Errorf("xvda after phase 2: %q must be there, want \"0 2 3\"", got)
	}
	if got := joinInts(l.chunks("xvdb")); got != "" {
		t.Errorf("xvdb was never flushed, yet %q must be there", got)
	}
	p := faultPhase{count: 5, writes: "ok", read: "ok"}
	if bad := p.check(r); len(bad) != 1 {
		t.Errorf("a failed write in an all-ok phase: %q, want one complaint", bad)
	}
	if _, err := l.add("@@GUEST fw 3 xvda 9 ok@@", 4); err == nil {
		t.Error("a line of another phase was taken")
	}
	if d, n := lost("fault-chunk xvda 0 same\nfault-chunk xvda 2 differs\nother line\n"); d != 1 || n != 2 {
		t.Errorf("lost: %d of %d, want 1 of 2", d, n)
	}
}
