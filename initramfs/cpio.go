package initramfs

import (
	"fmt"
	"io"
	"path"
	"strings"
)

// File types of a Record's Mode (the S_IF* bits of the newc mode field).
// An initramfs needs only these three.
const (
	TypeDir  = 0o040000
	TypeReg  = 0o100000
	TypeChar = 0o020000
	typeMask = 0o170000
)

// Record is one entry of a newc ("070701") cpio archive as the kernel's
// initramfs unpacker reads it. Owners, times and inode numbers are not part
// of a Record: the Writer sets them to fixed values so that equal Records
// give equal bytes.
type Record struct {
	// Name is the path inside the archive, relative ("init",
	// "lib/modules/6.1.0/modules.dep"): clean, without "..".
	Name string
	// Mode is a file type (TypeDir, TypeReg, TypeChar) or'ed with
	// permission bits (0o7777 at most).
	Mode uint32
	// RdevMajor and RdevMinor name the device of a TypeChar record.
	RdevMajor, RdevMinor uint32
	// Data is a regular file's contents; empty for other types.
	Data []byte
}

const (
	newcMagic      = "070701"
	newcHeaderSize = 110
	trailerName    = "TRAILER!!!"
)

// Writer writes a reproducible newc cpio archive: every record has uid and
// gid 0, mtime 0, nlink 1 (2 for directories) and an inode number counting
// up from 1 in write order, so the archive depends only on the records and
// their order. It writes no hard links. Close writes the trailer.
type Writer struct {
	w   io.Writer
	ino uint32
	off int64
	err error
}

// NewWriter returns a Writer that writes the archive to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write appends r to the archive. It rejects a record the kernel would
// misread: a bad name, an unknown type, data on a non-regular file.
func (w *Writer) Write(r Record) error {
	if w.err != nil {
		return w.err
	}
	if err := r.check(); err != nil {
		return err
	}
	w.ino++
	nlink := uint32(1)
	if r.Mode&typeMask == TypeDir {
		nlink = 2
	}
	w.writeHeader(w.ino, r.Mode, nlink, uint32(len(r.Data)), r.RdevMajor, r.RdevMinor, r.Name)
	w.write(r.Data)
	w.pad()
	return w.err
}

// Close writes the trailer record. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	w.writeHeader(0, 0, 1, 0, 0, 0, trailerName)
	return w.err
}

func (r *Record) check() error {
	n := r.Name
	switch {
	case n == "" || n == "." || n == trailerName:
		return fmt.Errorf("cpio: bad name %q", n)
	case strings.HasPrefix(n, "/") || path.Clean(n) != n:
		return fmt.Errorf("cpio: name %q is not a clean relative path", n)
	case n == ".." || strings.HasPrefix(n, "../"):
		return fmt.Errorf("cpio: name %q leaves the archive", n)
	case strings.IndexByte(n, 0) >= 0:
		return fmt.Errorf("cpio: name %q contains NUL", n)
	case len(n)+1 > 1<<20:
		return fmt.Errorf("cpio: name of %d bytes is too long", len(n))
	}
	if r.Mode&^(typeMask|0o7777) != 0 {
		return fmt.Errorf("cpio: %s: bad mode %#o", n, r.Mode)
	}
	switch r.Mode & typeMask {
	case TypeReg:
		if uint64(len(r.Data)) > 0xffffffff {
			return fmt.Errorf("cpio: %s: %d bytes do not fit newc's size field", n, len(r.Data))
		}
	case TypeDir, TypeChar:
		if len(r.Data) != 0 {
			return fmt.Errorf("cpio: %s: data on a non-regular file", n)
		}
	default:
		return fmt.Errorf("cpio: %s: unsupported file type %#o", n, r.Mode&typeMask)
	}
	if r.Mode&typeMask != TypeChar && (r.RdevMajor != 0 || r.RdevMinor != 0) {
		return fmt.Errorf("cpio: %s: device numbers on a non-device", n)
	}
	return nil
}

func (w *Writer) writeHeader(ino, mode, nlink, size, rmaj, rmin uint32, name string) {
	var h [newcHeaderSize]byte
	copy(h[:], newcMagic)
	// ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
	// rdevminor namesize check
	fields := [13]uint32{ino, mode, 0, 0, nlink, 0, size, 0, 0, rmaj, rmin, uint32(len(name) + 1), 0}
	const hexdigits = "0123456789abcdef"
	for i, f := range fields {
		for j := 0; j < 8; j++ {
			h[6+8*i+j] = hexdigits[f>>(28-4*j)&0xf]
		}
	}
	w.write(h[:])
	w.write([]byte(name))
	w.write([]byte{0})
	w.pad()
}

func (w *Writer) write(b []byte) {
	if w.err != nil || len(b) == 0 {
		return
	}
	n, err := w.w.Write(b)
	w.off += int64(n)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	w.err = err
}

// pad aligns the archive to 4 bytes, as newc wants after a name and after data.
func (w *Writer) pad() {
	var zero [3]byte
	w.write(zero[:(4-w.off%4)%4])
}
