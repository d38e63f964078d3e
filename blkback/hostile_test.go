package blkback_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/blkif"
	"blkdom/gnttab"
	"blkdom/xensim"
	"blkdom/xensim/testbed"
)

// Every malformed request gets ERROR or EOPNOTSUPP, touches nothing it
// was not granted, leaves no grant mapped, and the device keeps working.
func TestMalformedRequests(t *testing.T) {
	bed := newBed(t)
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	f := connect(t, bed, d, blkfront.Options{})
	guest := bed.Xen.Domain(1)
	pages, err := guest.AllocPages(4)
	if err != nil {
		t.Fatal(err)
	}
	grant := func(page int, to uint32, readOnly bool) gnttab.Ref {
		ref, err := guest.Grant(to, pages[page].Frame, readOnly)
		if err != nil {
			t.Fatal(err)
		}
		return ref
	}
	good := grant(0, 0, false)
	readOnly := grant(1, 0, true)
	elsewhere := grant(2, 7, false) // granted to another domain
	// An indirect page whose first descriptor is bad (last sector 8) and
	// whose others are good.
	indirectPage := grant(3, 0, true)
	for i := range 512 {
		d := pages[3].Mem[8*i:]
		binary.LittleEndian.PutUint32(d, uint32(good))
		d[4], d[5] = 0, 7
	}
	pages[3].Mem[5] = 8
	sectors := f.Disk.Sectors
	a := f.ABI()
	req := func(op, nsegs uint8, sector uint64, segs ...blkif.Segment) func([]byte) {
		return func(slot []byte) {
			a.PutRequest(slot, op, 0, sector, segs)
			slot[1] = nsegs
		}
	}
	seg := func(ref gnttab.Ref, first, last uint8) blkif.Segment {
		return blkif.Segment{Ref: ref, First: first, Last: last}
	}
	indirect := func(dataOp uint8, nsegs uint16, sector uint64, refs ...gnttab.Ref) func([]byte) {
		return func(slot []byte) {
			clear(slot)
			slot[0], slot[1] = blkif.OpIndirect, dataOp
			binary.LittleEndian.PutUint16(slot[2:], nsegs)
			binary.LittleEndian.PutUint64(slot[a.IndSector:], sector)
			for i, r := range refs {
				binary.LittleEndian.PutUint32(slot[a.IndGrefs+4*i:], uint32(r))
			}
		}
	}
	discard := func(flags uint8, sector, count uint64) func([]byte) {
		return func(slot []byte) { a.PutDiscard(slot, 0, sector, count, flags) }
	}
	segs := func(n int) []blkif.Segment {
		s := make([]blkif.Segment, n)
		for i := range s {
			s[i] = seg(good, 0, 7)
		}
		return s
	}
	tests := []struct {
		name string
		fill func([]byte)
		want int16
	}{
		{"reserved op 4", req(4, 1, 0, seg(good, 0, 7)), blkif.StatusNotSupported},
		{"unknown op 200", req(200, 1, 0, seg(good, 0, 7)), blkif.StatusNotSupported},
		{"discard past the end", discard(0, sectors-8, 16), blkif.StatusError},
		{"discard overflows", discard(0, 8, ^uint64(0)-4), blkif.StatusError},
		{"secure discard of a file", discard(blkif.DiscardSecure, 0, 8), blkif.StatusNotSupported},
		{"indirect without segments", indirect(blkif.OpRead, 0, 0, indirectPage), blkif.StatusError},
		{"indirect beyond the limit", indirect(blkif.OpRead, 257, 0, indirectPage), blkif.StatusError},
		{"indirect flush", indirect(blkif.OpFlushDiskcache, 1, 0, indirectPage), blkif.StatusError},
		{"indirect unknown op", indirect(9, 1, 0, indirectPage), blkif.StatusError},
		{"indirect page not granted", indirect(blkif.OpRead, 2, 0, 9999), blkif.StatusError},
		{"indirect bad descriptor", indirect(blkif.OpRead, 4, 0, indirectPage), blkif.StatusError},
		{"read without segments", req(blkif.OpRead, 0, 0), blkif.StatusError},
		{"write without segments", req(blkif.OpWrite, 0, 0), blkif.StatusError},
		{"12 segments", req(blkif.OpRead, 12, 0, segs(11)...), blkif.StatusError},
		{"255 segments", req(blkif.OpRead, 255, 0, segs(11)...), blkif.StatusError},
		{"flush with 12 segments", req(blkif.OpFlushDiskcache, 12, 0, segs(11)...), blkif.StatusError},
		{"first after last", req(blkif.OpRead, 1, 0, seg(good, 5, 4)), blkif.StatusError},
		{"last past the page", req(blkif.OpRead, 1, 0, seg(good, 0, 8)), blkif.StatusError},
		{"last 255", req(blkif.OpRead, 1, 0, seg(good, 0, 255)), blkif.StatusError},
		{"sector past the end", req(blkif.OpRead, 1, sectors, seg(good, 0, 0)), blkif.StatusError},
		{"transfer over the end", req(blkif.OpWrite, 1, sectors-7, seg(good, 0, 7)), blkif.StatusError},
		{"sector overflows", req(blkif.OpRead, 1, ^uint64(0), seg(good, 0, 7)), blkif.StatusError},
		{"ungranted ref", req(blkif.OpRead, 1, 0, seg(9999, 0, 7)), blkif.StatusError},
		{"read into a read-only grant", req(blkif.OpRead, 1, 0, seg(readOnly, 0, 7)), blkif.StatusError},
		{"grant for another domain", req(blkif.OpWrite, 1, 0, seg(elsewhere, 0, 7)), blkif.StatusError},
		{"one bad ref among good", req(blkif.OpRead, 3, 0, seg(good, 0, 7), seg(9999, 0, 7), seg(good, 0, 7)), blkif.StatusError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := f.Raw(tt.fill)
			if err != nil {
				t.Fatal(err)
			}
			if st != tt.want {
				t.Errorf("status %d, want %d", st, tt.want)
			}
			for _, ref := range []gnttab.Ref{good, readOnly, elsewhere, indirectPage} {
				if n := guest.GrantMapCount(ref); n != 0 {
					t.Errorf("grant %d still mapped %d times", ref, n)
				}
			}
		})
	}
	// The device still works, and a write through a read-only grant is fine.
	if st, err := f.Raw(req(blkif.OpWrite, 1, 0, seg(readOnly, 0, 7))); err != nil || st != blkif.StatusOK {
		t.Fatalf("good write after the bad ones: status %d, %v", st, err)
	}
	do(t, f, blkif.OpRead, 0, make([]byte, 4096))
	closeFrontend(t, f)
}

// A frontend publishing more requests than its ring holds gets its device
// disconnected; another device is not disturbed.
func TestBogusRingStopsOnlyThatDevice(t *testing.T) {
	bed := newBed(t)
	pathA, _ := newImage(t, 1<<20)
	pathB, _ := newImage(t, 1<<20)
	da := xensim.Disk{Frontend: 1, Devid: 51712, Params: pathA}
	db := xensim.Disk{Frontend: 2, Devid: 51712, Params: pathB}
	fa := connect(t, bed, da, blkfront.Options{})
	fb := connect(t, bed, db, blkfront.Options{})
	idx := fa.Indexes()
	idx.SetReqProd(idx.ReqProd() + 1000)
	if err := fa.Notify(); err != nil {
		t.Fatal(err)
	}
	waitBackendState(t, bed, da, "5")
	if isOpen(t, pathA) {
		t.Error("the bogus frontend's image is still open")
	}
	buf := make([]byte, 8192)
	binary.LittleEndian.PutUint64(buf, 42)
	do(t, fb, blkif.OpWrite, 8, buf)
	do(t, fb, blkif.OpRead, 8, buf)
	if binary.LittleEndian.Uint64(buf) != 42 {
		t.Error("the other device read wrong data")
	}
	closeFrontend(t, fb)
}

// The toolstack's permissions keep a guest out of its backend's keys: it
// cannot point the backend at another image or forge its state.
func TestGuestCannotWriteBackendKeys(t *testing.T) {
	bed := newBed(t)
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	f := connect(t, bed, d, blkfront.Options{})
	guest, err := bed.Guest(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"params", "state", "mode", "sectors"} {
		if err := guest.Write(d.BackendPath()+"/"+key, "/etc/shadow"); !errors.Is(err, syscall.EACCES) {
			t.Errorf("guest writing backend key %s: %v, want EACCES", key, err)
		}
	}
	if v, err := guest.Read(d.BackendPath() + "/sectors"); err != nil || v != "2048" {
		t.Errorf("guest reading its backend's sectors: %q, %v", v, err)
	}
	closeFrontend(t, f)
}

// faultyPlatform's grant handles panic when asked to map a chosen grant,
// standing in for a bug met while serving one device.
type faultyPlatform struct {
	blkback.Platform
	bad gnttab.Ref
}

func (p faultyPlatform) OpenGrants() (blkback.Grants, error) {
	g, err := p.Platform.OpenGrants()
	return faultyGrants{g, p.bad}, err
}

type faultyGrants struct {
	blkback.Grants
	bad gnttab.Ref
}

func (g faultyGrants) Map(dom uint32, refs []gnttab.Ref, writable bool) (gnttab.Mapping, error) {
	for _, r := range refs {
		if r == g.bad && dom == 1 {
			panic("injected fault")
		}
	}
	return g.Grants.Map(dom, refs, writable)
}

// A panic while serving one device answers the request with an error and
// disconnects that device; the process and the other devices go on.
func TestPanicDisconnectsOnlyThatDevice(t *testing.T) {
	const bad = 4242
	bed, err := testbed.New(t.TempDir(), blkback.Options{Logger: slog.New(slog.DiscardHandler)},
		func(p blkback.Platform) blkback.Platform { return faultyPlatform{p, bad} })
	if err != nil {
		t.Fatal(err)
	}
	defer bed.Close()
	pathA, _ := newImage(t, 1<<20)
	pathB, _ := newImage(t, 1<<20)
	da := xensim.Disk{Frontend: 1, Devid: 51712, Params: pathA}
	fa := connect(t, bed, da, blkfront.Options{})
	fb := connect(t, bed, xensim.Disk{Frontend: 2, Devid: 51712, Params: pathB}, blkfront.Options{})
	st, err := fa.Raw(func(slot []byte) {
		fa.ABI().PutRequest(slot, blkif.OpRead, 0, 0, []blkif.Segment{{Ref: bad, Last: 7}})
	})
	if err != nil || st != blkif.StatusError {
		t.Fatalf("request that hit the fault: status %d, %v", st, err)
	}
	waitBackendState(t, bed, da, "5")
	do(t, fb, blkif.OpWrite, 0, make([]byte, 4096))
	closeFrontend(t, fb)
}

// lockedBuffer collects a backend's log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A 3,000-character protocol key reaches the log and the error node cut
// to 128 bytes, quoted, with its length.
func TestGuestStringsBounded(t *testing.T) {
	var logged lockedBuffer
	bed, err := testbed.New(t.TempDir(), blkback.Options{Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer bed.Close()
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	f, err := bed.Attach(d, blkfront.Options{OmitProtocol: true})
	if err != nil {
		t.Fatal(err)
	}
	guest, err := bed.Guest(1)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("A", 3000)
	if err := guest.Write(d.FrontendPath()+"/protocol", long); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := f.Connect(ctx); err == nil {
		t.Fatal("connected with a bogus protocol")
	}
	node, err := bed.Dom0.Read("/local/domain/0/error/backend/vbd/1/51712/error")
	if err != nil {
		t.Fatal(err)
	}
	for what, text := range map[string]string{"log": logged.String(), "error node": node} {
		if strings.Contains(text, strings.Repeat("A", 129)) {
			t.Errorf("%s holds more than 128 bytes of the guest's value", what)
		}
		if !strings.Contains(text, `"...(3000 bytes)`) {
			t.Errorf("%s does not say the value was cut: %s", what, text)
		}
	}
}

// Indirect segments beyond what one request's 8 indirect pages can name
// are not offered, whatever the options say: a request for 4097 segments
// is refused, and the device stays connected.
func TestIndirectLimitClamped(t *testing.T) {
	bed := newBedWith(t, blkback.Options{MaxIndirectSegments: 5000})
	path, _ := newImage(t, 1<<20)
	d := xensim.Disk{Frontend: 1, Devid: 51712, Params: path}
	f := connect(t, bed, d, blkfront.Options{IndirectSegments: 5000})
	if v, _ := bed.Dom0.Read(d.BackendPath() + "/feature-max-indirect-segments"); v != "4096" {
		t.Errorf("feature-max-indirect-segments %q, want 4096", v)
	}
	guest := bed.Xen.Domain(1)
	pages, err := guest.AllocPages(blkif.MaxIndirectPages)
	if err != nil {
		t.Fatal(err)
	}
	refs := make([]gnttab.Ref, len(pages))
	for i, p := range pages {
		if refs[i], err = guest.Grant(0, p.Frame, true); err != nil {
			t.Fatal(err)
		}
	}
	st, err := f.Raw(func(slot []byte) {
		f.ABI().PutIndirect(slot, blkif.OpRead, 0, 0, 4097, refs)
	})
	if err != nil || st != blkif.StatusError {
		t.Fatalf("4097 indirect segments: status %d, %v", st, err)
	}
	if v, _ := bed.Dom0.Read(d.BackendPath() + "/state"); v != "4" {
		t.Fatalf("backend state %q after the request, want 4", v)
	}
	do(t, f, blkif.OpRead, 0, make([]byte, 4096))
	closeFrontend(t, f)
}
