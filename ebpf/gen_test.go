package ebpf

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// generated are the files gen.sh writes; they are committed.
var generated = []string{
	"probes_x86_bpfel.go", "probes_x86_bpfel.o",
	"learn_x86_bpfel_test.go", "learn_x86_bpfel_test.o",
}

// TestGeneratedUpToDate regenerates the BPF objects and their bindings into
// a temporary directory and compares them with the committed ones, which
// must therefore be regenerated (go generate ./ebpf) whenever the C changes.
// It needs clang-14; without it the test skips, unless BLKDOM_CHECK_GEN=1,
// when gen.sh installs the toolchain.
func TestGeneratedUpToDate(t *testing.T) {
	if _, err := exec.LookPath("clang-14"); err != nil && os.Getenv("BLKDOM_CHECK_GEN") != "1" {
		t.Skip("clang-14 not installed; set BLKDOM_CHECK_GEN=1 to install it and check")
	}
	dir := t.TempDir()
	cmd := exec.Command("./gen.sh", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gen.sh: %v\n%s", err, out)
	}
	for _, name := range generated {
		fresh, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fresh, committed) {
			t.Errorf("%s is stale: run go generate ./ebpf and commit it", name)
		}
	}
	extra, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(extra) != len(generated) {
		t.Errorf("gen.sh wrote %d files, the test compares %d", len(extra), len(generated))
	}
}
