package appliance

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"blkdom/xensim/xenstored/xenstoredtest"
	"blkdom/xs"
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

// TestUpgradeFromXenstore runs an upgrade request against the Go
// xenstored, as a driver domain (domid 7) sees it: the value of
// blkdom/upgrade found at start asks for nothing; a file that is no
// program is refused with its reason in data/blkdom/upgrade; a blkdom
// (a script answering its version) is copied, checked and handed to
// serve, its version published.
func TestUpgradeFromXenstore(t *testing.T) {
	s, _, dom0 := xenstoredtest.Start(t)
	home := "/local/domain/7"
	dir := t.TempDir()
	good := filepath.Join(dir, "blkdom")
	must(t, os.WriteFile(good, []byte("#!/bin/sh\necho blkdom v3\n"), 0o755))
	bad := filepath.Join(dir, "disk.img")
	must(t, os.WriteFile(bad, nil, 0o644))
	must(t, dom0.Write(home+"/blkdom/upgrade", good))
	must(t, dom0.SetPerms(home, []xs.Perm{{Dom: 7, Access: xs.AccessNone}}))
	must(t, dom0.SetPerms(home+"/blkdom", []xs.Perm{{Dom: 7, Access: xs.AccessNone}}))
	must(t, dom0.SetPerms(home+"/blkdom/upgrade", []xs.Perm{{Dom: 7, Access: xs.AccessNone}}))
	nc, err := s.DialAs(7)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	m := &machine{xs: xs.NewClient(nc), upgrades: make(chan string), upgradeExe: filepath.Join(dir, "installed")}
	t.Cleanup(func() { m.xs.Close() })
	m.console.out = &out
	m.log = NewLogger(&m.console, &m.level)
	cfg, _ := m.loadConfig()
	m.upgradeSeen = cfg.Upgrade
	m.watchConfig()
	defer m.watch.Close()
	state := func() string { v, _ := dom0.Read(home + "/data/blkdom/upgrade/state"); return v }

	must(t, dom0.Write(home+"/blkdom/upgrade", bad))
	waitFor(t, "the refusal", func() bool { return state() == "refused" })
	if e, _ := dom0.Read(home + "/data/blkdom/upgrade/error"); !strings.Contains(e, "not an executable file") {
		t.Errorf("refused with error %q", e)
	}
	select {
	case exe := <-m.upgrades:
		t.Fatalf("the start-up value or a refused binary was handed over: %s", exe)
	default:
	}

	must(t, dom0.Write(home+"/blkdom/upgrade", good))
	select {
	case exe := <-m.upgrades:
		if exe != m.upgradeExe {
			t.Errorf("handed over %s, want the copy %s", exe, m.upgradeExe)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no hand-over")
	}
	waitFor(t, "the hand-over state", func() bool { return state() == "handing over" })
	if v, _ := dom0.Read(home + "/data/blkdom/upgrade/version"); v != "blkdom v3" {
		t.Errorf("version %q, want blkdom v3", v)
	}
}
