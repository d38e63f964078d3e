package appliance

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestPrefaultExecutable checks that every page of the test binary's own
// mappings is in its page tables afterwards: Rss equals Size in smaps.
func TestPrefaultExecutable(t *testing.T) {
	n, err := prefaultExecutable()
	if err != nil {
		t.Fatal(err)
	}
	size, rss := exeSmaps(t)
	if n == 0 || size == 0 || rss != size || size/4 != uint64(n) {
		t.Errorf("mapped %d pages; the executable's mappings: %d KiB, %d KiB resident", n, size, rss)
	}
}

// exeSmaps sums the Size and Rss (KiB) of this process's mappings of its
// executable.
func exeSmaps(t *testing.T) (size, rss uint64) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in := false
	for sc := bufio.NewScanner(f); sc.Scan(); {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) >= 5 && strings.Contains(fields[0], "-"):
			in = len(fields) >= 6 && fields[5] == exe
		case in && len(fields) == 3 && (fields[0] == "Size:" || fields[0] == "Rss:"):
			kb, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			if fields[0] == "Size:" {
				size += kb
			} else {
				rss += kb
			}
		}
	}
	return size, rss
}
