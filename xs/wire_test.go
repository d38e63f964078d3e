package xs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"strings"
	"syscall"
	"testing"
)

func rawMessage(op Op, req, tx, length uint32, payload string) []byte {
	b := make([]byte, HeaderSize, HeaderSize+len(payload))
	binary.LittleEndian.PutUint32(b[0:], uint32(op))
	binary.LittleEndian.PutUint32(b[4:], req)
	binary.LittleEndian.PutUint32(b[8:], tx)
	binary.LittleEndian.PutUint32(b[12:], length)
	return append(b, payload...)
}

func TestReadMessage(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		want    Header
		payload string
		err     error
	}{
		{"read", rawMessage(OpRead, 7, 0, 5, "/a/b\x00"), Header{OpRead, 7, 0, 5}, "/a/b\x00", nil},
		{"empty payload", rawMessage(OpError, 1, 3, 0, ""), Header{OpError, 1, 3, 0}, "", nil},
		{"max payload", rawMessage(OpWrite, 2, 0, MaxPayload, strings.Repeat("x", MaxPayload)),
			Header{OpWrite, 2, 0, MaxPayload}, strings.Repeat("x", MaxPayload), nil},
		{"too large", rawMessage(OpWrite, 2, 0, MaxPayload+1, ""), Header{}, "", ErrTooLarge},
		{"huge length", rawMessage(OpWrite, 2, 0, 0xffffffff, ""), Header{}, "", ErrTooLarge},
		{"eof", nil, Header{}, "", io.EOF},
		{"short header", []byte{1, 0, 0}, Header{}, "", io.ErrUnexpectedEOF},
		{"short payload", rawMessage(OpRead, 1, 0, 10, "abc"), Header{}, "", io.ErrUnexpectedEOF},
	}
	buf := make([]byte, MaxPayload)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, p, err := ReadMessage(bytes.NewReader(tt.in), buf)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err != nil {
				return
			}
			if h != tt.want || string(p) != tt.payload {
				t.Fatalf("got %+v %q, want %+v %q", h, p, tt.want, tt.payload)
			}
		})
	}
	if _, _, err := ReadMessage(bytes.NewReader(nil), make([]byte, 10)); err != io.ErrShortBuffer {
		t.Fatalf("small buffer: err = %v", err)
	}
}

func TestWriteMessageRoundTrip(t *testing.T) {
	for _, payload := range []string{"", "OK\x00", "/local/domain/0\x00", strings.Repeat("y", MaxPayload)} {
		var w bytes.Buffer
		h := Header{Op: OpWatchEvent, ReqID: 9, TxID: 4, Len: 12345}
		if err := WriteMessage(&w, h, []byte(payload)); err != nil {
			t.Fatal(err)
		}
		got, p, err := ReadMessage(&w, make([]byte, MaxPayload))
		h.Len = uint32(len(payload))
		if err != nil || got != h || string(p) != payload {
			t.Fatalf("round trip of %d bytes: %+v %d %v", len(payload), got, len(p), err)
		}
	}
	var w bytes.Buffer
	if err := WriteMessage(&w, Header{Op: OpWrite}, make([]byte, MaxPayload+1)); err != ErrTooLarge || w.Len() != 0 {
		t.Fatalf("oversized: err %v, wrote %d", err, w.Len())
	}
}

// countingWriter counts Write calls, to check one message is one write.
type countingWriter struct{ writes, bytes int }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	w.bytes += len(p)
	return len(p), nil
}

func TestFrame(t *testing.T) {
	var f Frame
	f.AddArg("/a")
	f.AddString("value")
	f.AddUint(42)
	var w countingWriter
	if err := f.Send(&w, Header{Op: OpWrite}); err != nil || w.writes != 1 || w.bytes != HeaderSize+f.Len() {
		t.Fatalf("send: %v, %d writes of %d bytes", err, w.writes, w.bytes)
	}
	if got := string(f.buf[HeaderSize : HeaderSize+f.Len()]); got != "/a\x00value42\x00" {
		t.Fatalf("payload %q", got)
	}
	f.Reset()
	f.AddString(strings.Repeat("z", MaxPayload))
	if !f.Fits(0) || f.Fits(1) {
		t.Fatal("Fits wrong at the limit")
	}
	f.AddString("!")
	if err := f.Send(&w, Header{}); !errors.Is(err, syscall.E2BIG) {
		t.Fatalf("oversized frame: %v", err)
	}
}

func TestErrnoNames(t *testing.T) {
	tests := []struct {
		wire string
		want syscall.Errno
	}{
		{"ENOENT\x00", syscall.ENOENT}, {"EACCES\x00", syscall.EACCES}, {"EAGAIN\x00", syscall.EAGAIN},
		{"EINVAL\x00", syscall.EINVAL}, {"EEXIST\x00", syscall.EEXIST}, {"EISDIR\x00", syscall.EISDIR},
		{"ENOSPC\x00", syscall.ENOSPC}, {"EIO\x00", syscall.EIO}, {"EBUSY\x00", syscall.EBUSY},
		{"E2BIG\x00", syscall.E2BIG}, {"EPERM\x00", syscall.EPERM}, {"EROFS\x00", syscall.EROFS},
		{"ENOSYS\x00", syscall.ENOSYS}, {"EQUOTA\x00", syscall.EDQUOT}, {"ENOENT", syscall.ENOENT},
		{"EWHATEVER\x00", syscall.EINVAL}, {"", syscall.EINVAL},
	}
	for _, tt := range tests {
		if got := ParseErrno([]byte(tt.wire)); got != tt.want {
			t.Errorf("ParseErrno(%q) = %v, want %v", tt.wire, got, tt.want)
		}
		if tt.want != syscall.EINVAL || tt.wire == "EINVAL\x00" {
			if name := ErrnoName(tt.want); name+"\x00" != tt.wire && name != tt.wire {
				t.Errorf("ErrnoName(%v) = %q, want %q", tt.want, name, tt.wire)
			}
		}
	}
	if ErrnoName(syscall.ECHILD) != "EIO" {
		t.Error("unknown errno not sent as EIO")
	}
	err := error(&Error{Op: OpRead, Path: "/x", Err: syscall.ENOENT})
	if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, syscall.ENOENT) || err.Error() != "xs: READ /x: no such file or directory" {
		t.Fatalf("Error: %v", err)
	}
}

func TestPerms(t *testing.T) {
	tests := []struct {
		in   string
		want []Perm
		ok   bool
	}{
		{"b0\x00", []Perm{{0, AccessBoth}}, true},
		{"n0\x00r5\x00w7\x00", []Perm{{0, AccessNone}, {5, AccessRead}, {7, AccessWrite}}, true},
		{"r4294967295\x00", []Perm{{4294967295, AccessRead}}, true},
		{"b1", []Perm{{1, AccessBoth}}, true},
		{"r4294967296\x00", nil, false},
		{"x0\x00", nil, false},
		{"b\x00", nil, false},
		{"b-1\x00", nil, false},
		{"b0\x00\x00", nil, false},
		{"", nil, false},
	}
	for _, tt := range tests {
		got, err := ParsePerms([]byte(tt.in))
		if (err == nil) != tt.ok || tt.ok && !equalPerms(got, tt.want) {
			t.Errorf("ParsePerms(%q) = %v, %v", tt.in, got, err)
		}
	}
	if s := (Perm{Dom: 12, Access: AccessRead}).String(); s != "r12" {
		t.Errorf("String = %q", s)
	}
}

func equalPerms(a, b []Perm) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestWireAllocs(t *testing.T) {
	msg := rawMessage(OpRead, 1, 0, 5, "/a/b\x00")
	r := bytes.NewReader(msg)
	buf := make([]byte, MaxPayload)
	payload := []byte("/a/b\x00")
	n := testing.AllocsPerRun(100, func() {
		r.Reset(msg)
		if _, _, err := ReadMessage(r, buf); err != nil {
			t.Fatal(err)
		}
		if err := WriteMessage(io.Discard, Header{Op: OpRead}, payload); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Fatalf("%v allocations per read+write", n)
	}
}

func FuzzReadMessage(f *testing.F) {
	f.Add(rawMessage(OpRead, 7, 0, 5, "/a/b\x00"))
	f.Add(rawMessage(OpWatchEvent, 0, 0, 8, "/a\x00tok\x00\x00"))
	f.Add(rawMessage(OpWrite, 1, 2, MaxPayload+1, "x"))
	f.Add(append(rawMessage(OpError, 1, 0, 7, "ENOENT\x00"), rawMessage(OpRead, 2, 0, 0, "")...))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		buf := make([]byte, MaxPayload)
		for {
			h, p, err := ReadMessage(r, buf)
			if err != nil {
				if h.Len > MaxPayload && err != ErrTooLarge {
					t.Fatalf("oversized header gave %v", err)
				}
				return
			}
			if int(h.Len) != len(p) || len(p) > MaxPayload {
				t.Fatalf("header %+v with %d payload bytes", h, len(p))
			}
			var w bytes.Buffer
			if err := WriteMessage(&w, h, p); err != nil {
				t.Fatal(err)
			}
			h2, p2, err := ReadMessage(&w, make([]byte, MaxPayload))
			if err != nil || h2 != h || !bytes.Equal(p, p2) {
				t.Fatalf("re-encoding changed %+v %q into %+v %q (%v)", h, p, h2, p2, err)
			}
			errno := ParseErrno(p)
			_ = ErrnoName(errno)
			if perms, err := ParsePerms(p); err == nil && len(perms) == 0 {
				t.Fatal("ParsePerms accepted an empty list")
			}
		}
	})
}
