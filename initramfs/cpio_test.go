package initramfs

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// readArchive parses a newc archive as the kernel does, for checking what
// Writer wrote; it also checks the fields Writer promises to fix.
func readArchive(b []byte) ([]Record, error) {
	var out []Record
	off := 0
	bad := errors.New("malformed newc archive")
	for {
		if len(b)-off < newcHeaderSize || string(b[off:off+6]) != newcMagic {
			return nil, bad
		}
		var f [13]uint32
		for i := range f {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				return nil, bad
			}
			f[i] = uint32(v)
		}
		off += newcHeaderSize
		nameLen, size := int(f[11]), int(f[6])
		if nameLen < 1 || nameLen > len(b)-off || b[off+nameLen-1] != 0 {
			return nil, bad
		}
		name := string(b[off : off+nameLen-1])
		off = (off + nameLen + 3) &^ 3
		if name == trailerName {
			return out, nil
		}
		if off > len(b) || size > len(b)-off {
			return nil, bad
		}
		if f[2] != 0 || f[3] != 0 || f[5] != 0 || f[0] != uint32(len(out)+1) {
			return nil, errors.New("owner, time or inode not fixed")
		}
		r := Record{Name: name, Mode: f[1], RdevMajor: f[9], RdevMinor: f[10]}
		if size > 0 {
			r.Data = append([]byte(nil), b[off:off+size]...)
		}
		out = append(out, r)
		off = (off + size + 3) &^ 3
	}
}

func sampleRecords() []Record {
	return []Record{
		{Name: "dev", Mode: TypeDir | 0o755},
		{Name: "dev/console", Mode: TypeChar | 0o600, RdevMajor: 5, RdevMinor: 1},
		{Name: "empty", Mode: TypeReg | 0o644},
		{Name: "init", Mode: TypeReg | 0o755, Data: []byte("#!/bin/sh\necho hi\n")},
		{Name: "lib", Mode: TypeDir | 0o755},
		{Name: "lib/odd-sized name.txt", Mode: TypeReg | 0o600, Data: bytes.Repeat([]byte("x"), 4097)},
		{Name: "tmp", Mode: TypeDir | 0o1777},
	}
}

func writeArchive(t testing.TB, recs []Record) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, r := range recs {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestWriterRoundTrip(t *testing.T) {
	recs := sampleRecords()
	b := writeArchive(t, recs)
	if len(b)%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", len(b))
	}
	got, err := readArchive(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, recs) {
		t.Errorf("read back %+v, want %+v", got, recs)
	}
}

// TestWriterReadByCpio has GNU cpio, the tool distributions build
// initramfs images with, list and unpack what Writer wrote.
func TestWriterReadByCpio(t *testing.T) {
	cpio := lookTool(t, "cpio")
	archive := filepath.Join(t.TempDir(), "a.cpio")
	if err := os.WriteFile(archive, writeArchive(t, sampleRecords()), 0o644); err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command("sh", "-c", cpio+" -t -v --quiet < "+archive).CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, list)
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(string(list)), "\n") {
		f := strings.Fields(l)
		names = append(names, f[0]+" "+f[len(f)-1])
	}
	want := []string{"drwxr-xr-x dev", "crw------- dev/console", "-rw-r--r-- empty", "-rwxr-xr-x init",
		"drwxr-xr-x lib", "-rw------- name.txt", "drwxrwxrwt tmp"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("cpio -t -v lists\n%s\nwant modes and names %q", list, want)
	}
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", cpio+" -i -d --quiet --no-absolute-filenames < "+archive)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	for _, r := range sampleRecords() {
		fi, err := os.Lstat(filepath.Join(dir, r.Name))
		if err != nil {
			t.Error(err)
			continue
		}
		if got := uint32(fi.Mode().Perm()); got != r.Mode&0o777 {
			t.Errorf("%s: unpacked with mode %#o, want %#o", r.Name, got, r.Mode&0o777)
		}
		if r.Mode&typeMask != TypeReg {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, r.Name))
		if err != nil || !bytes.Equal(data, r.Data) {
			t.Errorf("%s: unpacked %d bytes (%v), want %d", r.Name, len(data), err, len(r.Data))
		}
	}
}

func TestWriterRejects(t *testing.T) {
	for _, r := range []Record{
		{Name: "", Mode: TypeDir | 0o755},
		{Name: ".", Mode: TypeDir | 0o755},
		{Name: "/abs", Mode: TypeDir | 0o755},
		{Name: "a/../b", Mode: TypeDir | 0o755},
		{Name: "a//b", Mode: TypeDir | 0o755},
		{Name: "../up", Mode: TypeDir | 0o755},
		{Name: "..", Mode: TypeDir | 0o755},
		{Name: "nul\x00", Mode: TypeReg | 0o644},
		{Name: trailerName, Mode: TypeReg | 0o644},
		{Name: "link", Mode: 0o120777, Data: []byte("target")},
		{Name: "dir", Mode: TypeDir | 0o755, Data: []byte("x")},
		{Name: "file", Mode: TypeReg | 0o644, RdevMajor: 1},
		{Name: "big-mode", Mode: TypeReg | 0o10000},
	} {
		var buf bytes.Buffer
		if err := NewWriter(&buf).Write(r); err == nil {
			t.Errorf("Write(%+v) = nil, want an error", r)
		} else if buf.Len() != 0 {
			t.Errorf("Write(%+v) failed but wrote %d bytes", r, buf.Len())
		}
	}
}

// FuzzWriter builds records from arbitrary bytes: whatever Write accepts
// must read back unchanged, whatever it rejects must leave no trace.
func FuzzWriter(f *testing.F) {
	f.Add("init", uint32(TypeReg|0o755), []byte("data"), "dev/console", uint32(TypeChar|0o600))
	f.Add("a/b/c", uint32(TypeDir|0o755), []byte(nil), "../x", uint32(0o120777))
	f.Add("x y", uint32(TypeReg), []byte{0, 1, 2}, "x\x00y", uint32(TypeReg|0o7777))
	f.Fuzz(func(t *testing.T, n1 string, m1 uint32, data []byte, n2 string, m2 uint32) {
		var want []Record
		var buf bytes.Buffer
		w := NewWriter(&buf)
		for _, r := range []Record{{Name: n1, Mode: m1, Data: data}, {Name: n2, Mode: m2}} {
			before := buf.Len()
			if err := w.Write(r); err != nil {
				if buf.Len() != before {
					t.Fatalf("rejected %q but wrote", r.Name)
				}
				continue
			}
			if len(r.Data) == 0 {
				r.Data = nil
			}
			want = append(want, r)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		got, err := readArchive(buf.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("read back %+v, want %+v", got, want)
		}
	})
}

// lookTool finds a Debian tool the test uses as a peer; its absence fails
// the test, since the project's test script installs it.
func lookTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is needed (Debian package %s): %v", name, name, err)
	}
	return p
}
