package gnttab

import (
	"errors"
	"strings"
	"testing"
)

func TestStatusError(t *testing.T) {
	for _, tc := range []struct {
		s    Status
		want string
	}{
		{StatusOK, "okay"},
		{StatusBadRef, "invalid grant reference"},
		{StatusPermissionDenied, "permission denied"},
		{StatusBadCopyArg, "copy arguments cross page boundary"},
		{StatusEAgain, "try again"},
		{-13, "unknown -13"},
		{5, "unknown 5"},
	} {
		if got := tc.s.Error(); !strings.Contains(got, tc.want) {
			t.Errorf("Status(%d).Error() = %q, want it to contain %q", tc.s, got, tc.want)
		}
	}
}

func TestCopySegmentCheck(t *testing.T) {
	page := make([]byte, PageSize)
	for _, tc := range []struct {
		name string
		seg  CopySegment
		want Status
	}{
		{"whole page", CopySegment{Dom: 1, Local: page}, StatusOK},
		{"last byte", CopySegment{Dom: 1, Offset: PageSize - 1, Local: page[:1]}, StatusOK},
		{"sector", CopySegment{Dom: 0x7fef, Offset: 512, Local: page[:512]}, StatusOK},
		{"empty", CopySegment{Dom: 1, Local: nil}, StatusBadCopyArg},
		{"crosses page end", CopySegment{Dom: 1, Offset: 1, Local: page}, StatusBadCopyArg},
		{"longer than a page", CopySegment{Dom: 1, Local: make([]byte, PageSize+1)}, StatusBadCopyArg},
		{"offset past page", CopySegment{Dom: 1, Offset: PageSize, Local: page[:1]}, StatusBadCopyArg},
		{"reserved domain", CopySegment{Dom: 0x7ff0, Local: page}, StatusBadDomain},
		{"domain beyond 16 bits", CopySegment{Dom: 0x10001, Local: page}, StatusBadDomain},
	} {
		if got := tc.seg.Check(); got != tc.want {
			t.Errorf("%s: Check() = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestCopyResult(t *testing.T) {
	for _, tc := range []struct {
		name     string
		statuses []Status
		want     *CopyError
	}{
		{"none", nil, nil},
		{"all ok", []Status{0, 0, 0}, nil},
		{"one bad", []Status{0, StatusBadRef, 0}, &CopyError{Failed: 1, First: 1, Status: StatusBadRef}},
		{"several", []Status{StatusPermissionDenied, 0, StatusBadRef, StatusBadRef},
			&CopyError{Failed: 3, First: 0, Status: StatusPermissionDenied}},
	} {
		segs := make([]CopySegment, len(tc.statuses))
		for i, s := range tc.statuses {
			segs[i].Status = s
		}
		err := CopyResult(segs)
		if tc.want == nil {
			if err != nil {
				t.Errorf("%s: CopyResult = %v, want nil", tc.name, err)
			}
			continue
		}
		var ce *CopyError
		if !errors.As(err, &ce) || *ce != *tc.want {
			t.Errorf("%s: CopyResult = %#v, want %#v", tc.name, err, tc.want)
			continue
		}
		if !errors.Is(err, tc.want.Status) {
			t.Errorf("%s: %v does not wrap %v", tc.name, err, tc.want.Status)
		}
	}
}

// FuzzCopySegmentCheck: a segment Check accepts never reaches outside its
// page, whatever the guest put in it.
func FuzzCopySegmentCheck(f *testing.F) {
	f.Add(uint32(1), uint16(0), 4096)
	f.Add(uint32(1), uint16(4095), 1)
	f.Add(uint32(1), uint16(4095), 2)
	f.Add(uint32(0x7ff0), uint16(0), 512)
	f.Add(uint32(5), uint16(65535), 0)
	f.Fuzz(func(t *testing.T, dom uint32, offset uint16, length int) {
		if length < 0 || length > 1<<20 {
			return
		}
		s := CopySegment{Dom: dom, Offset: offset, Local: make([]byte, length)}
		if s.Check() == StatusOK {
			if length == 0 || int(offset)+length > PageSize || dom >= 0x7ff0 {
				t.Fatalf("Check accepted dom %d offset %d length %d", dom, offset, length)
			}
			_ = make([]byte, PageSize)[offset : int(offset)+length] // in bounds
		}
	})
}
