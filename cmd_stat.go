package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	"blkdom/blkback"
	"blkdom/xs"
)

// statCmd prints the statistics blkdom backends publish in xenstore, and
// their CPU time, for every backend domain this domain can read (all of
// them from dom0).
func statCmd(fs *flag.FlagSet) func() error {
	backend := fs.Int("backend", -1, "only the backend in domain `id` (default: every domain)")
	every := fs.Duration("watch", 0, "print again at this `interval` (0: once)")
	wide := fs.Bool("wide", false, "print every column (the default fits 100 columns)")
	asJSON := fs.Bool("json", false, "print a JSON array of every vbd's statistics (one line per -watch round)")
	return func() error {
		switch {
		case *backend < -1:
			return usageErrorf("-backend %d: want a domain id", *backend)
		case *every < 0:
			return usageErrorf("-watch %v: want a positive interval, or 0 for once", *every)
		case *wide && *asJSON:
			return usageErrorf("-wide and -json: choose one (JSON has every field)")
		}
		c, err := xs.Open()
		if err != nil {
			return err
		}
		defer c.Close()
		for {
			rows, err := readStats(c, *backend)
			if err != nil {
				return err
			}
			if *asJSON {
				err = writeJSON(os.Stdout, rows)
			} else if err = writeTable(os.Stdout, rows, *wide); err == nil {
				err = printCPU(os.Stdout, c, *backend)
			}
			if err != nil {
				return err
			}
			if *every == 0 {
				return nil
			}
			time.Sleep(*every)
			if !*asJSON {
				fmt.Println()
			}
		}
	}
}

// statRow is one vbd's statistics and where they were found.
type statRow struct {
	backend, frontend, devid int
	device                   string // the backend's dev key ("xvda"), if any
	cache                    string // the cache policy in force, "-" when not connected
	s                        blkback.Stats
}

// readStats reads every vbd's statistics under the backend domains (only
// domain only, if it is not -1), in order of domain ids and devids.
func readStats(c *xs.Client, only int) ([]statRow, error) {
	doms, err := c.Directory("/local/domain")
	if err != nil {
		return nil, err
	}
	var rows []statRow
	for _, dom := range doms {
		be, err := strconv.Atoi(dom)
		if err != nil || only >= 0 && be != only {
			continue
		}
		base := "/local/domain/" + dom + "/backend/vbd"
		fes, err := c.Directory(base)
		if err != nil {
			continue // no vbd backends there, or not ours to read
		}
		for _, fe := range fes {
			ids, _ := c.Directory(base + "/" + fe)
			for _, id := range ids {
				dir := base + "/" + fe + "/" + id
				s, err := blkback.ParseStats(func(k string) (string, error) { return c.Read(dir + "/statistics/" + k) })
				if errors.Is(err, syscall.ENOENT) {
					continue // not served by blkdom, or not connected yet
				}
				if err != nil {
					return nil, fmt.Errorf("%s/statistics: %w", dir, err)
				}
				r := statRow{backend: be, s: s}
				r.frontend, _ = strconv.Atoi(fe)
				r.devid, _ = strconv.Atoi(id)
				r.device, _ = c.Read(dir + "/dev")
				if r.cache, err = c.Read(dir + "/" + blkback.PolicyKey); err != nil {
					r.cache = "-" // not connected
				}
				rows = append(rows, r)
			}
		}
	}
	slices.SortFunc(rows, func(a, b statRow) int {
		return cmp.Or(cmp.Compare(a.backend, b.backend), cmp.Compare(a.frontend, b.frontend), cmp.Compare(a.devid, b.devid))
	})
	return rows, nil
}

// statColumns are the table's columns; the default table has those not
// marked wide, and fits 100 columns for counts up to 10 digits.
var statColumns = []struct {
	name  string
	wide  bool
	value func(r *statRow) string
}{
	{"backend", false, func(r *statRow) string { return strconv.Itoa(r.backend) }},
	{"frontend", false, func(r *statRow) string { return strconv.Itoa(r.frontend) }},
	{"devid", true, func(r *statRow) string { return strconv.Itoa(r.devid) }},
	{"device", false, func(r *statRow) string { return cmp.Or(r.device, "-") }},
	{"rd_req", false, func(r *statRow) string { return u(r.s.RdReq) }},
	{"wr_req", false, func(r *statRow) string { return u(r.s.WrReq) }},
	{"f_req", false, func(r *statRow) string { return u(r.s.FReq) }},
	{"ds_req", true, func(r *statRow) string { return u(r.s.DsReq) }},
	{"rd_sect", true, func(r *statRow) string { return u(r.s.RdSect) }},
	{"wr_sect", true, func(r *statRow) string { return u(r.s.WrSect) }},
	{"read", false, func(r *statRow) string { return bytesIEC(r.s.RdSect * 512) }},
	{"written", false, func(r *statRow) string { return bytesIEC(r.s.WrSect * 512) }},
	{"oo_req", true, func(r *statRow) string { return u(r.s.OOReq) }},
	{"errors", false, func(r *statRow) string { return u(r.s.Errors) }},
	{"invalid", true, func(r *statRow) string { return u(r.s.Invalid) }},
	{"inflight", true, func(r *statRow) string { return strconv.FormatInt(r.s.InFlight, 10) }},
	{"p50_us", true, func(r *statRow) string { return u(r.s.Percentile(0.5)) }},
	{"p99_us", false, func(r *statRow) string { return u(r.s.Percentile(0.99)) }},
	{"late_refs", true, func(r *statRow) string {
		if r.s.LateRefs < 0 {
			return "off"
		}
		return strconv.FormatInt(r.s.LateRefs, 10)
	}},
	{"cache", true, func(r *statRow) string { return r.cache }},
}

func u(v uint64) string { return strconv.FormatUint(v, 10) }

// bytesIEC is n bytes for a person: 512, 4.0K, 1.5G.
func bytesIEC(n uint64) string {
	if n < 1024 {
		return u(n)
	}
	v, unit := float64(n), 0
	for v >= 1024 && unit < len("KMGTPE") {
		v /= 1024
		unit++
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + "KMGTPE"[unit-1:unit]
}

// writeTable prints rows as a table under a header of column names.
func writeTable(out io.Writer, rows []statRow, wide bool) error {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	for _, c := range statColumns {
		if wide || !c.wide {
			fmt.Fprint(w, c.name, "\t")
		}
	}
	fmt.Fprintln(w)
	for i := range rows {
		for _, c := range statColumns {
			if wide || !c.wide {
				fmt.Fprint(w, c.value(&rows[i]), "\t")
			}
		}
		fmt.Fprintln(w)
	}
	return w.Flush()
}

// statJSON is one vbd in "blkdom stat -json": every counter, named as in
// xenstore, and the whole latency histogram.
type statJSON struct {
	Backend  int    `json:"backend"`
	Frontend int    `json:"frontend"`
	Devid    int    `json:"devid"`
	Device   string `json:"device"`
	RdReq    uint64 `json:"rd_req"`
	WrReq    uint64 `json:"wr_req"`
	FReq     uint64 `json:"f_req"`
	DsReq    uint64 `json:"ds_req"`
	RdSect   uint64 `json:"rd_sect"`
	WrSect   uint64 `json:"wr_sect"`
	OOReq    uint64 `json:"oo_req"`
	Errors   uint64 `json:"errors"`
	Invalid  uint64 `json:"invalid"`
	InFlight int64  `json:"inflight"`
	// The rings' event handling, and the pages mapped for requests.
	Notifies  uint64 `json:"notifies"`
	PollHits  uint64 `json:"poll_hits"`
	PollUs    uint64 `json:"poll_us"`
	Spurious  uint64 `json:"spurious_events"`
	GrantMaps uint64 `json:"grant_maps"`
	// DataIovecs: the iovecs reads and writes went out with.
	DataIovecs uint64 `json:"data_iovecs"`
	// LateRefs is null when the eBPF probes are off.
	LateRefs *int64 `json:"late_refs"`
	// Cache is the cache policy in force ("-" when not connected).
	Cache string `json:"cache"`
	// LatencyUSLog2[k] counts requests answered in under 2^k µs.
	LatencyUSLog2 []uint64 `json:"latency_us_log2"`
}

// writeJSON prints rows as one JSON array on one line.
func writeJSON(out io.Writer, rows []statRow) error {
	list := make([]statJSON, len(rows))
	for i, r := range rows {
		s := r.s
		list[i] = statJSON{Backend: r.backend, Frontend: r.frontend, Devid: r.devid, Device: r.device,
			RdReq: s.RdReq, WrReq: s.WrReq, FReq: s.FReq, DsReq: s.DsReq, RdSect: s.RdSect, WrSect: s.WrSect,
			OOReq: s.OOReq, Errors: s.Errors, Invalid: s.Invalid, InFlight: s.InFlight,
			Notifies: s.Notifies, PollHits: s.PollHits, PollUs: s.PollUs, Spurious: s.Spurious, GrantMaps: s.GrantMaps,
			DataIovecs:    s.DataIovecs,
			LatencyUSLog2: s.Latency[:], Cache: r.cache}
		if s.LateRefs >= 0 {
			list[i].LateRefs = &s.LateRefs
		}
	}
	return json.NewEncoder(out).Encode(list)
}
