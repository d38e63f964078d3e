package main

import (
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

// runStat prints the statistics blkdom backends publish in xenstore, for
// every backend domain this domain can read (all of them from dom0).
func runStat(args []string) error {
	fs := flag.NewFlagSet("stat", flag.ContinueOnError)
	backend := fs.Int("backend", -1, "only the backend in this domain (default: every domain)")
	every := fs.Duration("watch", 0, "print again at this interval (0: once)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := xs.Open()
	if err != nil {
		return err
	}
	defer c.Close()
	for {
		if err := printStats(os.Stdout, c, *backend); err != nil {
			return err
		}
		if *every <= 0 {
			return nil
		}
		time.Sleep(*every)
		fmt.Println()
	}
}

// printStats prints one line per vbd found under the backend domains.
func printStats(out io.Writer, c *xs.Client, only int) error {
	doms, err := c.Directory("/local/domain")
	if err != nil {
		return err
	}
	slices.SortFunc(doms, func(a, b string) int { return atoiOr(a) - atoiOr(b) })
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "backend\tfrontend\tdevid\trd_req\twr_req\tf_req\tds_req\trd_sect\twr_sect\too_req\terrors\tinvalid\tinflight\tp50_us\tp99_us\tlate_refs\tcache\t")
	for _, dom := range doms {
		if only >= 0 && dom != strconv.Itoa(only) {
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
				dir := base + "/" + fe + "/" + id + "/statistics/"
				s, err := blkback.ParseStats(func(k string) (string, error) { return c.Read(dir + k) })
				if errors.Is(err, syscall.ENOENT) {
					continue // not served by blkdom, or nothing published yet
				}
				if err != nil {
					return fmt.Errorf("%s: %w", dir, err)
				}
				late := "off"
				if s.LateRefs >= 0 {
					late = strconv.FormatInt(s.LateRefs, 10)
				}
				policy, err := c.Read(base + "/" + fe + "/" + id + "/" + blkback.PolicyKey)
				if err != nil {
					policy = "-" // not connected
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t\n",
					dom, fe, id, s.RdReq, s.WrReq, s.FReq, s.DsReq, s.RdSect, s.WrSect, s.OOReq,
					s.Errors, s.Invalid, s.InFlight, s.Percentile(0.5), s.Percentile(0.99), late, policy)
			}
		}
	}
	return w.Flush()
}

func atoiOr(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 1 << 30
	}
	return n
}
