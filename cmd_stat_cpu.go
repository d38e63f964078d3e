package main

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"syscall"
	"text/tabwriter"

	"blkdom/blkback"
	"blkdom/xs"
)

// printCPU prints the CPU time each blkdom backend published (its process's
// rusage, under data/blkdom in its domain's home), one line per backend
// domain, after a blank line; it prints nothing when no backend published
// any.
func printCPU(out io.Writer, c *xs.Client, only int) error {
	doms, err := c.Directory("/local/domain")
	if err != nil {
		return err
	}
	slices.SortFunc(doms, func(a, b string) int { return atoiOr(a) - atoiOr(b) })
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := "\nbackend\tcpu_user_s\tcpu_sys_s\t"
	for _, dom := range doms {
		if only >= 0 && dom != strconv.Itoa(only) {
			continue
		}
		dir := "/local/domain/" + dom + "/" + blkback.CPUDir + "/"
		cpu, err := blkback.ParseCPU(func(k string) (string, error) { return c.Read(dir + k) })
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EACCES) {
			continue // no blkdom there, or not ours to read
		}
		if err != nil {
			return fmt.Errorf("%s: %w", dir, err)
		}
		if header != "" {
			fmt.Fprintln(w, header)
			header = ""
		}
		fmt.Fprintf(w, "%s\t%.3f\t%.3f\t\n", dom, cpu.User.Seconds(), cpu.System.Seconds())
	}
	return w.Flush()
}

// atoiOr is s as a number, or a number after every domain id for a name
// that is not one, to sort domain names numerically.
func atoiOr(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 1 << 30
	}
	return n
}
