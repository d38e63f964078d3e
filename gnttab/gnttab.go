// Package gnttab maps pages that other domains granted to this one.
//
// A frontend shares memory with blkdom by granting pages: each grant is named
// by the granting domain and a grant reference. Device (Linux's
// /dev/xen/gntdev) maps a batch of grants into one contiguous range of this
// process's memory so that I/O can go straight into the guest's pages, and
// copies between grants and local buffers where mapping is unsafe.
//
// gnttab owns the kernel interface only; which grants to map, and for how
// long, is the caller's business. The simulated grant table used by tests
// and the demo lives in package xensim and has the same method set.
package gnttab

import (
	"fmt"
	"strconv"
)

// PageSize is the size of one granted frame.
const PageSize = 4096

// Ref is a grant reference: an index into the granting domain's grant table.
type Ref uint32

// Mapping is a contiguous run of mapped grants. Mem covers exactly the
// mapped pages; Index is the handle the mapper needs to unmap them.
type Mapping struct {
	Mem   []byte
	Index uint64
}

// MaxBatch is the most grants one Map call maps. Device sizes its ioctl
// buffer for it and xensim enforces the same limit, so code tested in
// simulation never exceeds what the real device accepts. It covers the
// largest blkif request (256 indirect segments) with room to spare.
const MaxBatch = 1024

// Status is the result of one element of a grant operation: Xen's GNTST_*
// code from grant_table.h.
type Status int16

// Xen's grant operation status codes.
const (
	StatusOK               Status = 0
	StatusGeneralError     Status = -1
	StatusBadDomain        Status = -2
	StatusBadRef           Status = -3
	StatusBadHandle        Status = -4
	StatusBadVirtAddr      Status = -5
	StatusBadDevAddr       Status = -6
	StatusNoDeviceSpace    Status = -7
	StatusPermissionDenied Status = -8
	StatusBadPage          Status = -9
	StatusBadCopyArg       Status = -10
	StatusAddressTooBig    Status = -11
	StatusEAgain           Status = -12
)

var statusText = [...]string{
	"okay",
	"undefined error",
	"unrecognised domain id",
	"invalid grant reference",
	"invalid mapping handle",
	"invalid virtual address",
	"invalid device address",
	"no spare translation slot in the I/O MMU",
	"permission denied",
	"bad page",
	"copy arguments cross page boundary",
	"page address size too large",
	"operation not done; try again",
}

// Error describes the status in Xen's words, so a failed segment's Status
// can be returned or wrapped as an error.
func (s Status) Error() string {
	if s <= 0 && int(-s) < len(statusText) {
		return "grant status: " + statusText[-s]
	}
	return "grant status: unknown " + strconv.Itoa(int(s))
}

// maxDomain is DOMID_FIRST_RESERVED: domain ids at or above it name no
// guest, and the copy interface carries domain ids in 16 bits.
const maxDomain = 0x7ff0

// CopySegment is one element of a grant copy: it copies len(Local) bytes
// between Local and the page that domain Dom granted as Ref, starting
// Offset bytes into that page. Copy sets Status.
type CopySegment struct {
	Dom    uint32 // domain that granted Ref
	Ref    Ref
	Offset uint16 // byte offset inside the granted page
	// Local is the buffer in this process. It must not be empty, and
	// Offset+len(Local) must not pass the end of the granted page.
	Local []byte
	// ToGrant copies Local into the granted page (the grant must be
	// writable); otherwise the granted page is copied into Local.
	ToGrant bool
	// Status is set by Copy: StatusOK if this segment was copied,
	// otherwise why not.
	Status Status
}

// Check reports whether the segment is well formed before any grant is
// touched: StatusBadCopyArg for an empty buffer or one that crosses the end
// of the page, StatusBadDomain for a reserved domain id.
func (s *CopySegment) Check() Status {
	switch {
	case len(s.Local) == 0 || int(s.Offset)+len(s.Local) > PageSize:
		return StatusBadCopyArg
	case s.Dom >= maxDomain:
		return StatusBadDomain
	}
	return StatusOK
}

// CopyError reports a Copy in which some segments failed. Every segment's
// Status says whether it was copied; the ones with StatusOK were.
type CopyError struct {
	Failed int    // number of failed segments
	First  int    // index of the first failed segment
	Status Status // status of the first failed segment
}

func (e *CopyError) Error() string {
	return fmt.Sprintf("gnttab: copy: %d segment(s) failed, first #%d: %v", e.Failed, e.First, e.Status)
}

// Unwrap returns the first failed segment's status.
func (e *CopyError) Unwrap() error { return e.Status }

// CopyResult is the error a Copy implementation returns after setting
// every segment's Status: nil when all succeeded, else a *CopyError.
func CopyResult(segs []CopySegment) error {
	var e *CopyError
	for i := range segs {
		if segs[i].Status == StatusOK {
			continue
		}
		if e == nil {
			e = &CopyError{First: i, Status: segs[i].Status}
		}
		e.Failed++
	}
	if e == nil {
		return nil // not a typed nil
	}
	return e
}
