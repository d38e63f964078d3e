package appliance

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallBinary installs real executables (shell scripts standing in
// for blkdom) and checks what it refuses: only a regular executable file
// whose "version" runs and answers "blkdom ..." is installed.
func TestInstallBinary(t *testing.T) {
	dir := t.TempDir()
	script := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, src string
		want      string // the version line; "": refused
		err       string
	}{
		{"blkdom", script("good", `[ "$1" = version ] && echo "blkdom v2.0" || exit 2`, 0o755), "blkdom v2.0", ""},
		{"not executable", script("noexec", "echo blkdom v2.0", 0o644), "", "not an executable file"},
		{"not blkdom", script("other", "echo hello", 0o755), "", "is not blkdom's answer"},
		{"version fails", script("fails", "echo blkdom v2.0; exit 3", 0o755), "", "exit status 3"},
		{"not a program", writeGarbage(t, dir), "", "exec format error"},
		{"directory", dir, "", "not an executable file"},
		{"missing", filepath.Join(dir, "missing"), "", "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "blkdom-upgrade")
			got, err := installBinary(tc.src, dst)
			if tc.want != "" {
				if err != nil || got != tc.want {
					t.Fatalf("installBinary = %q, %v; want %q", got, err, tc.want)
				}
				if st, err := os.Stat(dst); err != nil || st.Mode().Perm() != 0o755 {
					t.Fatalf("installed copy: %v, %v", st, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("installBinary = %q, %v; want an error with %q", got, err, tc.err)
			}
			if _, err := os.Stat(dst + ".new"); err == nil {
				t.Error("a temporary copy was left behind")
			}
		})
	}
}

// writeGarbage writes an executable file that is no program.
func writeGarbage(t *testing.T, dir string) string {
	p := filepath.Join(dir, "garbage.bin")
	if err := os.WriteFile(p, []byte{0x7f, 'E', 'L', 'F', 0, 1, 2, 3}, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMountSetAdopt: a successor PID 1 takes over the mounts that are
// there (here /proc) and leaves the others to be mounted.
func TestMountSetAdopt(t *testing.T) {
	proc := Mount{Device: "proc", Mountpoint: "/proc", FSType: "proc"}
	absent := Mount{Device: "/dev/xvdz", Mountpoint: t.TempDir(), FSType: "ext4", N: 1}
	var s mountSet
	rest := s.adopt([]Mount{proc, absent})
	if len(rest) != 1 || rest[0] != absent {
		t.Errorf("adopt left %v; want [%v]", rest, absent)
	}
	if got := s.list(); len(got) != 1 || got[0] != proc {
		t.Errorf("mounted %v; want [%v]", got, proc)
	}
	if rest := s.adopt([]Mount{proc}); len(rest) != 1 {
		t.Errorf("adopting %v twice kept it twice", proc)
	}
}
