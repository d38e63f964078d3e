package appliance

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// prefaultExecutable maps every page of blkdom's own executable into the
// process's page tables at once (madvise MADV_POPULATE_READ, Linux 5.14)
// and returns how many pages that was. The executable is already in memory
// (the initramfs), but each page's first use still faults, and in a PV
// domain under emulation a fault costs tens of microseconds: the first
// device of a driver domain ran code nothing had run before and paid about
// 30 ms of faults on its way to InitWait that the second device did not.
// Run in the background after serving starts, long before a toolstack
// builds a guest.
func prefaultExecutable() (pages int, err error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, err
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		// start-end perms offset dev inode path
		f := bytes.Fields(sc.Bytes())
		if len(f) < 6 || string(f[5]) != exe {
			continue
		}
		start, end, ok := bytes.Cut(f[0], []byte("-"))
		if !ok {
			continue
		}
		lo, err1 := strconv.ParseUint(string(start), 16, 64)
		hi, err2 := strconv.ParseUint(string(end), 16, 64)
		if err1 != nil || err2 != nil || hi <= lo {
			return pages, fmt.Errorf("maps line %q", sc.Text())
		}
		if err := populateRead(uintptr(lo), uintptr(hi-lo)); err != nil {
			return pages, fmt.Errorf("madvise %s: %w", f[0], err)
		}
		pages += int((hi - lo) / uint64(os.Getpagesize()))
	}
	return pages, sc.Err()
}
