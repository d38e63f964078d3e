package xs

import (
	"encoding/binary"
	"errors"
	"io"
	"strconv"
	"sync"
	"syscall"
)

// Op is a xenstore message type (xs_wire.h enum xsd_sockmsg_type).
type Op uint32

// Message types. 20 (XS_RESTRICT) was removed from the protocol.
const (
	OpDirectory          Op = 1
	OpRead               Op = 2
	OpGetPerms           Op = 3
	OpWatch              Op = 4
	OpUnwatch            Op = 5
	OpTransactionStart   Op = 6
	OpTransactionEnd     Op = 7
	OpIntroduce          Op = 8
	OpRelease            Op = 9
	OpGetDomainPath      Op = 10
	OpWrite              Op = 11
	OpMkdir              Op = 12
	OpRm                 Op = 13
	OpSetPerms           Op = 14
	OpWatchEvent         Op = 15
	OpError              Op = 16
	OpIsDomainIntroduced Op = 17
	OpResume             Op = 18
	OpSetTarget          Op = 19
	OpResetWatches       Op = 21
	OpDirectoryPart      Op = 22
)

var opNames = [...]string{
	OpDirectory: "DIRECTORY", OpRead: "READ", OpGetPerms: "GET_PERMS",
	OpWatch: "WATCH", OpUnwatch: "UNWATCH", OpTransactionStart: "TRANSACTION_START",
	OpTransactionEnd: "TRANSACTION_END", OpIntroduce: "INTRODUCE", OpRelease: "RELEASE",
	OpGetDomainPath: "GET_DOMAIN_PATH", OpWrite: "WRITE", OpMkdir: "MKDIR", OpRm: "RM",
	OpSetPerms: "SET_PERMS", OpWatchEvent: "WATCH_EVENT", OpError: "ERROR",
	OpIsDomainIntroduced: "IS_DOMAIN_INTRODUCED", OpResume: "RESUME",
	OpSetTarget: "SET_TARGET", OpResetWatches: "RESET_WATCHES",
	OpDirectoryPart: "DIRECTORY_PART",
}

// String returns the xs_wire.h name without the XS_ prefix.
func (o Op) String() string {
	if int(o) < len(opNames) && opNames[o] != "" {
		return opNames[o]
	}
	return "OP(" + strconv.FormatUint(uint64(o), 10) + ")"
}

// HeaderSize is the size of the little-endian message header on the wire.
const HeaderSize = 16

// MaxPayload is the largest payload a message may carry (XENSTORE_PAYLOAD_MAX).
const MaxPayload = 4096

// Header is the fixed part of every xenstore message. ReqID is echoed in the
// reply; TxID names the transaction (0: none); Len is the payload length.
type Header struct {
	Op    Op
	ReqID uint32
	TxID  uint32
	Len   uint32
}

// ErrTooLarge is returned for a message whose payload exceeds MaxPayload. On
// receive the stream can no longer be framed, so the connection must be dropped.
var ErrTooLarge = errors.New("xs: message payload exceeds 4096 bytes")

// ReadMessage reads one message from r. buf must hold at least MaxPayload
// bytes; the returned payload aliases it and is valid until the next call.
// A header announcing more than MaxPayload bytes yields ErrTooLarge without
// reading the payload. A stream that ends mid-message yields
// io.ErrUnexpectedEOF; a clean end before a header yields io.EOF.
func ReadMessage(r io.Reader, buf []byte) (Header, []byte, error) {
	if len(buf) < MaxPayload {
		return Header{}, nil, io.ErrShortBuffer
	}
	if _, err := io.ReadFull(r, buf[:HeaderSize]); err != nil {
		return Header{}, nil, err
	}
	h := Header{
		Op:    Op(binary.LittleEndian.Uint32(buf[0:])),
		ReqID: binary.LittleEndian.Uint32(buf[4:]),
		TxID:  binary.LittleEndian.Uint32(buf[8:]),
		Len:   binary.LittleEndian.Uint32(buf[12:]),
	}
	if h.Len > MaxPayload {
		return h, nil, ErrTooLarge
	}
	p := buf[:h.Len]
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return h, nil, err
	}
	return h, p, nil
}

// Frame builds one outgoing message in a fixed buffer so that it leaves in a
// single Write (a message is never interleaved with another writer's, and
// /dev/xen/xenbus sees it whole). The zero Frame is empty and ready to use.
// Adding past MaxPayload marks the frame oversized; Send then fails with E2BIG.
type Frame struct {
	buf  [HeaderSize + MaxPayload]byte
	n    int // payload bytes used
	over bool
}

// Reset empties the frame for reuse.
func (f *Frame) Reset() { f.n, f.over = 0, false }

// Len returns the payload length so far.
func (f *Frame) Len() int { return f.n }

// AddString appends s to the payload.
func (f *Frame) AddString(s string) {
	if f.n+len(s) > MaxPayload {
		f.over = true
		return
	}
	f.n += copy(f.buf[HeaderSize+f.n:], s)
}

// AddBytes appends b to the payload.
func (f *Frame) AddBytes(b []byte) {
	if f.n+len(b) > MaxPayload {
		f.over = true
		return
	}
	f.n += copy(f.buf[HeaderSize+f.n:], b)
}

// AddArg appends s and its terminating NUL, the encoding of one argument.
func (f *Frame) AddArg(s string) {
	f.AddString(s)
	f.AddString("\x00")
}

// AddUint appends v in decimal followed by a NUL.
func (f *Frame) AddUint(v uint64) {
	var d [20]byte
	f.AddBytes(strconv.AppendUint(d[:0], v, 10))
	f.AddString("\x00")
}

// Fits reports whether n more payload bytes fit.
func (f *Frame) Fits(n int) bool { return !f.over && f.n+n <= MaxPayload }

// Send writes the header h (its Len replaced by the payload length) and the
// payload to w in one Write.
func (f *Frame) Send(w io.Writer, h Header) error {
	if f.over {
		return syscall.E2BIG
	}
	binary.LittleEndian.PutUint32(f.buf[0:], uint32(h.Op))
	binary.LittleEndian.PutUint32(f.buf[4:], h.ReqID)
	binary.LittleEndian.PutUint32(f.buf[8:], h.TxID)
	binary.LittleEndian.PutUint32(f.buf[12:], uint32(f.n))
	_, err := w.Write(f.buf[:HeaderSize+f.n])
	return err
}

var framePool = sync.Pool{New: func() any { return new(Frame) }}

// WriteMessage writes one message with the given payload (h.Len is ignored)
// in a single Write. A payload over MaxPayload fails with ErrTooLarge and
// writes nothing.
func WriteMessage(w io.Writer, h Header, payload []byte) error {
	if len(payload) > MaxPayload {
		return ErrTooLarge
	}
	f := framePool.Get().(*Frame)
	f.Reset()
	f.AddBytes(payload)
	err := f.Send(w, h)
	framePool.Put(f)
	return err
}

// NextArg splits the NUL-terminated argument at the start of p and returns it
// and the rest. ok is false when p holds no NUL.
func NextArg(p []byte) (arg, rest []byte, ok bool) {
	for i, c := range p {
		if c == 0 {
			return p[:i], p[i+1:], true
		}
	}
	return nil, p, false
}

// errnoNames is the xsd_errors table of xs_wire.h, plus EPERM (newer Xen) and
// EQUOTA (oxenstored's quota error).
var errnoNames = []struct {
	name  string
	errno syscall.Errno
}{
	{"EINVAL", syscall.EINVAL}, {"EACCES", syscall.EACCES}, {"EEXIST", syscall.EEXIST},
	{"EISDIR", syscall.EISDIR}, {"ENOENT", syscall.ENOENT}, {"ENOMEM", syscall.ENOMEM},
	{"ENOSPC", syscall.ENOSPC}, {"EIO", syscall.EIO}, {"ENOTEMPTY", syscall.ENOTEMPTY},
	{"ENOSYS", syscall.ENOSYS}, {"EROFS", syscall.EROFS}, {"EBUSY", syscall.EBUSY},
	{"EAGAIN", syscall.EAGAIN}, {"EISCONN", syscall.EISCONN}, {"E2BIG", syscall.E2BIG},
	{"EPERM", syscall.EPERM}, {"EQUOTA", syscall.EDQUOT},
}

// ErrnoName returns the wire name of e, as sent in an ERROR reply. Errors
// outside the protocol's table are sent as EIO.
func ErrnoName(e syscall.Errno) string {
	for _, n := range errnoNames {
		if n.errno == e {
			return n.name
		}
	}
	return "EIO"
}

// ParseErrno maps an ERROR reply's payload (the name, NUL-terminated or not)
// to an errno. Unknown names give EINVAL, as libxenstore does.
func ParseErrno(payload []byte) syscall.Errno {
	if name, _, ok := NextArg(payload); ok {
		payload = name
	}
	for _, n := range errnoNames {
		if string(payload) == n.name {
			return n.errno
		}
	}
	return syscall.EINVAL
}
