package e2e

// What the tests read from dom0's steps and the guests' markers, and the
// matches they check values against. Parsing is tested here without Xen.

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// negotiated is what blkfront must say it uses on a disk blkdom serves.
var negotiated = []string{"flush diskcache: enabled", "persistent grants: enabled", "indirect descriptors: enabled"}

// match is what a value read from dom0 or the guest must be.
type match struct {
	desc string
	ok   func(string) bool
}

func is(want string) match {
	return match{fmt.Sprintf("%q", want), func(s string) bool { return s == want }}
}

func atLeast(n int64) match {
	return match{fmt.Sprintf("a number >= %d", n), func(s string) bool {
		v, err := strconv.ParseInt(s, 10, 64)
		return err == nil && v >= n
	}}
}

func has(subs ...string) match {
	return match{fmt.Sprintf("to contain %q", subs), func(s string) bool {
		for _, sub := range subs {
			if !strings.Contains(s, sub) {
				return false
			}
		}
		return true
	}}
}

// factLine is a guest's "@@GUEST fact <disk> k=v k=v@@" line (or, for
// blkfront's negotiation line, "negotiated=<the rest>").
var factLine = regexp.MustCompile(`@@GUEST fact (\S+) (.*?)@@`)

// guestFacts reads the fact lines in a step's output: facts[disk][key],
// disk "guest" for the guest as a whole.
func guestFacts(out string) map[string]map[string]string {
	facts := map[string]map[string]string{}
	for _, m := range factLine.FindAllStringSubmatch(out, -1) {
		f := facts[m[1]]
		if f == nil {
			f = map[string]string{}
			facts[m[1]] = f
		}
		if v, ok := strings.CutPrefix(m[2], "negotiated="); ok {
			f["negotiated"] = v
			continue
		}
		for _, kv := range strings.Fields(m[2]) {
			if k, v, ok := strings.Cut(kv, "="); ok {
				f[k] = v
			}
		}
	}
	return facts
}

// vbdKeys reads vbd_keys's lines "<vdev> backend|frontend KEY=VALUE":
// keys["xvda backend"]["sectors"].
func vbdKeys(out string) map[string]map[string]string {
	keys := map[string]map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.SplitN(strings.TrimSpace(l), " ", 3)
		if len(f) != 3 || (f[1] != "backend" && f[1] != "frontend") {
			continue
		}
		k, v, _ := strings.Cut(f[2], "=")
		side := f[0] + " " + f[1]
		if keys[side] == nil {
			keys[side] = map[string]string{}
		}
		keys[side][k] = v
	}
	return keys
}

// statDomain is stat_wait's line naming the guest's domain id.
var statDomain = regexp.MustCompile(`guest \S+ is domain ([0-9]+),`)

// statRows reads the "blkdom stat" table stat_wait printed: the guest's
// domain id and the rows of its disks, each as column name -> value.
func statRows(out string) (dom string, rows []map[string]string) {
	m := statDomain.FindStringSubmatch(out)
	if m == nil {
		return "", nil
	}
	var header []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && f[0] == "backend" {
			header = f
			continue
		}
		if header == nil || len(f) != len(header) {
			continue
		}
		row := map[string]string{}
		for i, h := range header {
			row[h] = f[i]
		}
		if row["frontend"] == m[1] {
			rows = append(rows, row)
		}
	}
	return m[1], rows
}

// checkStats checks the "blkdom stat" table stat_wait printed: guest name's
// disks rows, each with reads, writes and flushes, no failed or refused
// request, and a late_refs count if the backend's eBPF probes are on ("off"
// if not), and reports their numbers.
func checkStats(t *testing.T, name, out string, disks int, probes bool) {
	t.Helper()
	dom, rows := statRows(out)
	if dom == "" {
		t.Errorf("stat_wait did not name %s's domain:\n%s", name, out)
		return
	}
	late := is("off")
	if probes {
		late = atLeast(0)
	}
	for _, row := range rows {
		for _, c := range []struct {
			col  string
			want match
		}{
			{"rd_req", atLeast(1)},
			{"wr_req", atLeast(1)},
			{"f_req", atLeast(1)}, // the guest's fsyncs
			{"errors", is("0")},
			{"invalid", is("0")},
			{"late_refs", late},
		} {
			if !c.want.ok(row[c.col]) {
				t.Errorf("blkdom stat: %s disk %s: %s = %q, want %s", name, row["devid"], c.col, row[c.col], c.want.desc)
			}
		}
		for _, col := range []string{"rd_req", "wr_req", "f_req", "ds_req", "p50_us", "p99_us", "late_refs"} {
			metric(t, fmt.Sprintf("stat_%s_%s_%s", name, row["devid"], col), row[col])
		}
	}
	if len(rows) != disks {
		t.Errorf("blkdom stat shows %d disks of %s (domain %s), want %d:\n%s", len(rows), name, dom, disks, out)
	}
}

// Samples of what the steps print, from a run.
const (
	factsSample = `[2026-11-26 00:22:44] @@GUEST fs-ok xvdb@@
[2026-11-26 00:22:44] @@GUEST fact guest cpus=2@@
[2026-11-26 00:22:45] @@GUEST fact xvda queues=2 logical_block_size=512 physical_block_size=512 discard_granularity=4096 discard_max_bytes=67108864 write_cache=write_back@@
[2026-11-26 00:22:45] @@GUEST fact xvda negotiated=flush diskcache: enabled; persistent grants: enabled; indirect descriptors: enabled; bounce buffer: enabled@@
[2026-11-26 00:22:45] @@GUEST fact xvdb queues=1 logical_block_size=4096 physical_block_size=4096 discard_granularity=4096 discard_max_bytes=67108864 write_cache=write_through@@
[2026-11-26 00:22:45] @@GUEST fact xvdb negotiated=barrier or flush: disabled; persistent grants: enabled; indirect descriptors: enabled; bounce buffer: enabled@@
[2026-11-26 00:22:48] @@GUEST done rc=0@@`

	keysSample = `xvda backend params=/e2e/work/feat.img
xvda backend feature-persistent=1
xvda backend statistics=
xvda frontend multi-queue-num-queues=2
xvdb backend sector-size=4096
image /e2e/work/x.img: 64 MiB
xvdb sideways x=1`

	statSample = `guest gdd is domain 5, backend domain 4
  backend  frontend  devid  rd_req  wr_req  f_req  ds_req  rd_sect  wr_sect  oo_req  errors  invalid  inflight  p50_us   p99_us  late_refs
        4         5  51712     317     127     20       2    38020    26402       0       0        0         0   16384  2097152          0
        4         5  51728     198      75      4       2    19432    17128       0       0        1         0    8192  2097152        off
        4         6  51712       1       1      1       0        8        8       0       0        0         0     512     1024          0`
)

func TestGuestFacts(t *testing.T) {
	facts := guestFacts(factsSample)
	for _, c := range []struct{ disk, key, want string }{
		{"guest", "cpus", "2"},
		{"xvda", "queues", "2"},
		{"xvda", "write_cache", "write_back"},
		{"xvda", "negotiated", "flush diskcache: enabled; persistent grants: enabled; indirect descriptors: enabled; bounce buffer: enabled"},
		{"xvdb", "logical_block_size", "4096"},
		{"xvdb", "negotiated", "barrier or flush: disabled; persistent grants: enabled; indirect descriptors: enabled; bounce buffer: enabled"},
		{"xvdc", "queues", ""},
	} {
		if got := facts[c.disk][c.key]; got != c.want {
			t.Errorf("facts[%s][%s] = %q, want %q", c.disk, c.key, got, c.want)
		}
	}
	if !has(negotiated...).ok(facts["xvda"]["negotiated"]) || has(negotiated...).ok(facts["xvdb"]["negotiated"]) {
		t.Errorf("negotiated: xvda should match, xvdb (flush disabled) should not")
	}
}

func TestVbdKeys(t *testing.T) {
	keys := vbdKeys(keysSample)
	for _, c := range []struct{ side, key, want string }{
		{"xvda backend", "params", "/e2e/work/feat.img"},
		{"xvda backend", "feature-persistent", "1"},
		{"xvda backend", "statistics", ""},
		{"xvda frontend", "multi-queue-num-queues", "2"},
		{"xvdb backend", "sector-size", "4096"},
	} {
		if got, ok := keys[c.side][c.key]; !ok || got != c.want {
			t.Errorf("keys[%s][%s] = %q (present %v), want %q", c.side, c.key, got, ok, c.want)
		}
	}
	if len(keys) != 3 {
		t.Errorf("vbdKeys read %d sides, want 3 (other lines ignored): %v", len(keys), keys)
	}
}

func TestStatRows(t *testing.T) {
	dom, rows := statRows(statSample)
	if dom != "5" || len(rows) != 2 {
		t.Fatalf("statRows: domain %q, %d rows; want 5, 2", dom, len(rows))
	}
	for _, c := range []struct {
		row       int
		col, want string
	}{
		{0, "devid", "51712"},
		{0, "f_req", "20"},
		{0, "late_refs", "0"},
		{1, "devid", "51728"},
		{1, "invalid", "1"},
		{1, "late_refs", "off"},
	} {
		if got := rows[c.row][c.col]; got != c.want {
			t.Errorf("row %d %s = %q, want %q", c.row, c.col, got, c.want)
		}
	}
	if dom, rows := statRows("no table"); dom != "" || rows != nil {
		t.Errorf("statRows of nothing = %q, %v", dom, rows)
	}
}

func TestMatches(t *testing.T) {
	for _, c := range []struct {
		m    match
		in   string
		want bool
	}{
		{is("off"), "off", true},
		{is("off"), "0", false},
		{atLeast(0), "0", true},
		{atLeast(0), "off", false},
		{atLeast(0), "-1", false},
		{atLeast(2), "2", true},
		{atLeast(2), "1", false},
		{atLeast(2), "", false},
		{has("a", "b"), "b and a", true},
		{has("a", "b"), "a only", false},
	} {
		if got := c.m.ok(c.in); got != c.want {
			t.Errorf("%s on %q = %v, want %v", c.m.desc, c.in, got, c.want)
		}
	}
}
