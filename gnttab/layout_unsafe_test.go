package gnttab

import (
	"encoding/binary"
	"testing"
	"unsafe"
)

// ioc is the kernel's _IOC(dir, type, nr, size) (include/uapi/asm-generic/ioctl.h).
func ioc(dir, typ, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | typ<<8 | nr
}

const iocNone = 0

func TestIoctlNumbers(t *testing.T) {
	// The kernel structs end in refs[1], so sizeof includes one ref.
	mapSize := unsafe.Offsetof(mapGrantRef{}.refs) + unsafe.Sizeof(grantRef{})
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"MAP_GRANT_REF", ioctlMapGrantRef, ioc(iocNone, 'G', 0, mapSize)},
		{"UNMAP_GRANT_REF", ioctlUnmapGrantRef, ioc(iocNone, 'G', 1, unsafe.Sizeof(unmapGrantRef{}))},
		{"SET_MAX_GRANTS", ioctlSetMaxGrants, ioc(iocNone, 'G', 3, unsafe.Sizeof(uint32(0)))},
		{"GRANT_COPY", ioctlGrantCopy, ioc(iocNone, 'G', 8, unsafe.Sizeof(grantCopy{}))},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, _IOC gives %#x", tc.name, tc.got, tc.want)
		}
	}
}

func TestLayout(t *testing.T) {
	var m mapGrantRef
	var u unmapGrantRef
	var c grantCopy
	var s copySegment
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"grant_ref size", unsafe.Sizeof(grantRef{}), 8},
		{"grant_ref.ref", unsafe.Offsetof(grantRef{}.ref), 4},
		{"map.count", unsafe.Offsetof(m.count), 0},
		{"map.index", unsafe.Offsetof(m.index), 8},
		{"map.refs", unsafe.Offsetof(m.refs), 16},
		{"map size", unsafe.Sizeof(m), 16 + 8*MaxBatch},
		{"unmap.index", unsafe.Offsetof(u.index), 0},
		{"unmap.count", unsafe.Offsetof(u.count), 8},
		{"unmap size", unsafe.Sizeof(u), 16},
		{"copy.count", unsafe.Offsetof(c.count), 0},
		{"copy.segments", unsafe.Offsetof(c.segments), 8},
		{"copy size", unsafe.Sizeof(c), 16},
		{"segment.source", unsafe.Offsetof(s.source), 0},
		{"segment.dest", unsafe.Offsetof(s.dest), 8},
		{"segment.len", unsafe.Offsetof(s.len), 16},
		{"segment.flags", unsafe.Offsetof(s.flags), 18},
		{"segment.status", unsafe.Offsetof(s.status), 20},
		{"segment size", unsafe.Sizeof(s), 24},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

func TestCopyAddrEncoding(t *testing.T) {
	a := foreignAddr(0x1234, 0xdeadbeef, 0x0abc)
	if got := binary.NativeEndian.Uint32(a[0:]); got != 0xdeadbeef {
		t.Errorf("ref = %#x", got)
	}
	if got := binary.NativeEndian.Uint16(a[4:]); got != 0x0abc {
		t.Errorf("offset = %#x", got)
	}
	if got := binary.NativeEndian.Uint16(a[6:]); got != 0x1234 {
		t.Errorf("domid = %#x", got)
	}
	buf := make([]byte, 8)
	l := localAddr(buf)
	if got, want := binary.NativeEndian.Uint64(l[:]), uint64(uintptr(unsafe.Pointer(&buf[0]))); got != want {
		t.Errorf("local address = %#x, want %#x", got, want)
	}
}
