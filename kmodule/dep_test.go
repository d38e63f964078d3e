package kmodule

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/md/dm-mod.ko":            "dm_mod",
		"dm-mod":                                 "dm_mod",
		"sd_mod":                                 "sd_mod",
		"kernel/fs/xfs/xfs.ko.xz":                "xfs",
		"kernel/drivers/block/zram.ko.zst":       "zram",
		"kernel/drivers/xen/xen-gntdev.ko.gz":    "xen_gntdev",
		"kernel/arch/x86/crypto/crc32c-intel.ko": "crc32c_intel",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
	for p, want := range map[string]bool{"a.ko": false, "a.ko.xz": true, "a.ko.zst": true, "a.ko.gz": true} {
		if Compressed(p) != want {
			t.Errorf("Compressed(%q) = %v", p, !want)
		}
	}
}

func TestParseDeps(t *testing.T) {
	good := "kernel/a.ko: kernel/b.ko kernel/c.ko\n\n# comment\nkernel/b.ko: kernel/c.ko\nkernel/c.ko:\n"
	d, err := ParseDeps(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"kernel/a.ko", "kernel/b.ko", "kernel/c.ko"}; !reflect.DeepEqual(d.Paths(), want) {
		t.Errorf("Paths() = %q, want %q", d.Paths(), want)
	}
	var buf bytes.Buffer
	if err := d.FormatDeps(&buf, d.Paths()); err != nil || buf.String() != strings.ReplaceAll(good, "\n\n# comment", "") {
		t.Errorf("FormatDeps wrote %q (%v)", buf.String(), err)
	}
	for _, bad := range []string{
		"kernel/a.ko kernel/b.ko\n",
		"/abs/a.ko:\n",
		"kernel/a.ko: ../b.ko\n",
		"kernel/a.txt:\n",
		"kernel/.ko:\n",
		"kernel/a.ko:\nkernel/a.ko:\n",
		"kernel//a.ko:\n",
		"kernel/a.ko: kernel/b\n",
	} {
		if _, err := ParseDeps(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseDeps(%q) succeeded", bad)
		}
	}
}

func TestLoadOrder(t *testing.T) {
	deps := "k/ext4.ko: k/crc16.ko k/mbcache.ko k/jbd2.ko\nk/crc16.ko:\nk/mbcache.ko:\nk/jbd2.ko:\n" +
		"k/xenfs.ko: k/privcmd.ko\nk/privcmd.ko:\nk/loop.ko:\n" +
		"k/cyc1.ko: k/cyc2.ko\nk/cyc2.ko: k/cyc1.ko\nk/dangling.ko: k/absent.ko\n"
	d, err := ParseDeps(strings.NewReader(deps))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		roots, want []string
		fails       bool
	}{
		{roots: []string{"k/ext4.ko"}, want: []string{"k/jbd2.ko", "k/mbcache.ko", "k/crc16.ko", "k/ext4.ko"}},
		{roots: []string{"k/loop.ko", "k/xenfs.ko", "k/privcmd.ko", "k/loop.ko"}, want: []string{"k/loop.ko", "k/privcmd.ko", "k/xenfs.ko"}},
		{roots: nil, want: nil},
		{roots: []string{"k/cyc1.ko"}, fails: true},
		{roots: []string{"k/dangling.ko"}, fails: true},
		{roots: []string{"k/unknown.ko"}, fails: true},
	} {
		got, err := d.LoadOrder(tc.roots)
		if (err != nil) != tc.fails || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("LoadOrder(%q) = %q, %v; want %q, fails %v", tc.roots, got, err, tc.want, tc.fails)
		}
	}
}

// FuzzParseDeps: any modules.dep either fails to parse or gives a load
// order (or an error) in which every module comes after what it needs.
func FuzzParseDeps(f *testing.F) {
	f.Add("k/a.ko: k/b.ko\nk/b.ko:\n")
	f.Add("k/a.ko: k/a.ko\n")
	f.Add("k/a.ko: k/b.ko k/c.ko\nk/c.ko: k/b.ko\nk/b.ko:\n# x\n")
	f.Add("k/a.ko:: k/b.ko\n")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDeps(strings.NewReader(s))
		if err != nil {
			return
		}
		order, err := d.LoadOrder(d.Paths())
		if err != nil {
			return
		}
		pos := map[string]int{}
		for i, p := range order {
			if _, dup := pos[p]; dup {
				t.Fatalf("%s twice in %q", p, order)
			}
			pos[p] = i
		}
		for _, p := range d.Paths() {
			for _, n := range d.needs[p] {
				if pos[n] >= pos[p] {
					t.Fatalf("%s before %s, which it needs", p, n)
				}
			}
		}
	})
}
