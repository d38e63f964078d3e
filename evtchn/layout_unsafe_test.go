package evtchn

import (
	"testing"
	"unsafe"
)

// ioc is the kernel's _IOC(dir, type, nr, size).
func ioc(dir, typ, nr, size uintptr) uintptr { return dir<<30 | size<<16 | typ<<8 | nr }

func TestIoctlNumbers(t *testing.T) {
	u32 := unsafe.Sizeof(uint32(0))
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		// struct ioctl_evtchn_bind_interdomain {unsigned int remote_domain, remote_port;}
		{"BIND_INTERDOMAIN", ioctlBindInterdomain, ioc(0, 'E', 1, 2*u32)},
		{"BIND_UNBOUND_PORT", ioctlBindUnboundPort, ioc(0, 'E', 2, u32)},
		{"UNBIND", ioctlUnbind, ioc(0, 'E', 3, u32)},
		{"NOTIFY", ioctlNotify, ioc(0, 'E', 4, u32)},
		{"RESET", ioctlReset, ioc(0, 'E', 5, 0)},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, _IOC gives %#x", tc.name, tc.got, tc.want)
		}
	}
	if got := unsafe.Sizeof(Device{}.arg); got != 8 {
		t.Errorf("ioctl argument is %d bytes, want 8", got)
	}
}
