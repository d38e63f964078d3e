package xentest

import (
	"testing"
	"unsafe"
)

// The ioctl numbers are _IOC(_IOC_NONE, 'G', nr, size) of the kernel's
// structs; the alloc struct's size counts its one-element refs array.
func TestIoctlNumbers(t *testing.T) {
	ioc := func(nr, size uintptr) uintptr { return size<<16 | 'G'<<8 | nr }
	if got := ioc(5, unsafe.Offsetof(allocArg{}.refs)+8); got != ioctlAlloc {
		t.Errorf("ALLOC_GREF: _IOC gives %#x, have %#x", got, ioctlAlloc)
	}
	if got := ioc(6, unsafe.Sizeof(deallocArg{})); got != ioctlDealloc {
		t.Errorf("DEALLOC_GREF: _IOC gives %#x, have %#x", got, ioctlDealloc)
	}
}
