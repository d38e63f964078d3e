package xs

import (
	"errors"
	"strconv"
)

// Access is what a permission entry allows, as its xenstore letter.
type Access byte

// Access letters of the xenstore permission text format.
const (
	AccessNone  Access = 'n'
	AccessRead  Access = 'r'
	AccessWrite Access = 'w'
	AccessBoth  Access = 'b'
)

// CanRead reports whether a grants reading.
func (a Access) CanRead() bool { return a == AccessRead || a == AccessBoth }

// CanWrite reports whether a grants writing.
func (a Access) CanWrite() bool { return a == AccessWrite || a == AccessBoth }

// Perm is one entry of a node's permission list. As in xenstore, the first
// entry names the owner (who always has full access) and gives the default
// access of every domain not listed later; later entries grant Access to Dom.
type Perm struct {
	Dom    uint32
	Access Access
}

// String returns the wire form, e.g. "b0" or "r5".
func (p Perm) String() string { return string(AppendPerm(nil, p)) }

// AppendPerm appends the wire form of p (without a NUL) to dst.
func AppendPerm(dst []byte, p Perm) []byte {
	return strconv.AppendUint(append(dst, byte(p.Access)), uint64(p.Dom), 10)
}

// ErrBadPerm reports a permission string that is not a letter of n, r, w, b
// followed by a decimal domain id.
var ErrBadPerm = errors.New("xs: malformed permission")

// ParsePerm parses one permission in wire form ("b0", "r5").
func ParsePerm(s []byte) (Perm, error) {
	if len(s) < 2 || len(s) > 11 {
		return Perm{}, ErrBadPerm
	}
	a := Access(s[0])
	switch a {
	case AccessNone, AccessRead, AccessWrite, AccessBoth:
	default:
		return Perm{}, ErrBadPerm
	}
	var dom uint64
	for _, c := range s[1:] {
		if c < '0' || c > '9' {
			return Perm{}, ErrBadPerm
		}
		dom = dom*10 + uint64(c-'0')
	}
	if dom > 1<<32-1 {
		return Perm{}, ErrBadPerm
	}
	return Perm{Dom: uint32(dom), Access: a}, nil
}

// ParsePerms parses a NUL-separated permission list (a GET_PERMS reply or
// the tail of a SET_PERMS request). The list must not be empty; a missing
// final NUL is tolerated.
func ParsePerms(p []byte) ([]Perm, error) {
	var perms []Perm
	for len(p) > 0 {
		arg, rest, ok := NextArg(p)
		if !ok {
			arg, rest = p, nil
		}
		perm, err := ParsePerm(arg)
		if err != nil {
			return nil, err
		}
		perms = append(perms, perm)
		p = rest
	}
	if len(perms) == 0 {
		return nil, ErrBadPerm
	}
	return perms, nil
}
