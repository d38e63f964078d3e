package ebpf

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"
)

// TestEventLayout checks decode's offsets against struct event as the
// compiler laid it out in the committed object.
func TestEventLayout(t *testing.T) {
	spec, err := loadProbes()
	if err != nil {
		t.Fatal(err)
	}
	var ev *btf.Struct
	if err := spec.Types.TypeByName("event", &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Size != eventSize {
		t.Errorf("struct event is %d bytes, decode expects %d", ev.Size, eventSize)
	}
	want := map[string]uint32{
		"page": 0, "since_ns": 8, "gref": 16, "disk": 20,
		"domid": 24, "hook": 26, "unmapped": 27, "pad": 28,
	}
	for _, m := range ev.Members {
		off, ok := want[m.Name]
		if !ok {
			t.Errorf("struct event has a field %q that decode ignores", m.Name)
			continue
		}
		if m.Offset.Bytes() != off {
			t.Errorf("struct event field %q at %d, decode reads it at %d", m.Name, m.Offset.Bytes(), off)
		}
		delete(want, m.Name)
	}
	for name := range want {
		t.Errorf("struct event has no field %q", name)
	}
}

func encodeEvent(page, since uint64, gref, disk uint32, dom uint16, hook, unmapped uint8) []byte {
	b := make([]byte, eventSize)
	ne := binary.NativeEndian
	ne.PutUint64(b[0:], page)
	ne.PutUint64(b[8:], since)
	ne.PutUint32(b[16:], gref)
	ne.PutUint32(b[20:], disk)
	ne.PutUint16(b[24:], dom)
	b[26], b[27] = hook, unmapped
	return b
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		name    string
		record  []byte
		want    Event
		wantErr bool
	}{
		{
			name:   "retransmit",
			record: encodeEvent(0xffffea0001234540, 1500, 100, 42, 7, 0, 0),
			want:   Event{Page: 0xffffea0001234540, Since: 1500 * time.Nanosecond, Gref: 100, Disk: 42, Dom: 7, Hook: HookRetransmit},
		},
		{
			name:   "consume after unmap",
			record: encodeEvent(1, 2, 3, 4, 5, 3, 1),
			want:   Event{Page: 1, Since: 2, Gref: 3, Disk: 4, Dom: 5, Hook: HookConsume, Unmapped: true},
		},
		{
			name:   "ring buffer record padded to 8 bytes",
			record: append(encodeEvent(9, 9, 9, 9, 9, 1, 0), 0, 0, 0, 0, 0, 0, 0, 0),
			want:   Event{Page: 9, Since: 9, Gref: 9, Disk: 9, Dom: 9, Hook: HookXmit},
		},
		{name: "empty", record: nil, wantErr: true},
		{name: "one byte short", record: encodeEvent(1, 1, 1, 1, 1, 1, 1)[:eventSize-1], wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e Event
			err := e.decode(tc.record)
			if (err != nil) != tc.wantErr {
				t.Fatalf("decode error %v, want error %v", err, tc.wantErr)
			}
			if err == nil && e != tc.want {
				t.Errorf("decoded %+v, want %+v", e, tc.want)
			}
		})
	}
}

// FuzzDecode: any record decodes or fails cleanly, and a decoded event
// encodes back to the record's first bytes (padding aside).
func FuzzDecode(f *testing.F) {
	f.Add(encodeEvent(0xffffea0001234540, 1500, 100, 42, 7, 0, 0))
	f.Add(encodeEvent(1, 2, 3, 4, 5, 3, 1))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Event
		if err := e.decode(b); err != nil {
			if len(b) >= eventSize {
				t.Fatalf("decode of %d bytes failed: %v", len(b), err)
			}
			return
		}
		var unmapped uint8
		if e.Unmapped {
			unmapped = 1
		}
		back := encodeEvent(e.Page, uint64(e.Since), uint32(e.Gref), e.Disk, e.Dom, uint8(e.Hook), unmapped)
		// Padding and any unmapped value other than 0 or 1 do not survive.
		b = append([]byte(nil), b[:eventSize]...)
		b[27] = unmapped
		clear(b[28:])
		if string(back) != string(b) {
			t.Fatalf("record %x decoded to %+v, which encodes to %x", b, e, back)
		}
		_ = e.Hook.String()
	})
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{HookRetransmit.String(), "retransmit"},
		{HookXmit.String(), "xmit"},
		{HookDrop.String(), "drop"},
		{HookConsume.String(), "consume"},
		{Hook(4).String(), "Hook(4)"},
		{ReasonKernel.String(), "kernel refused the probes"},
		{ReasonPermission.String(), "not permitted"},
		{Reason(-1).String(), "Reason(-1)"},
		{Reason(99).String(), "Reason(99)"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestCountsTotal(t *testing.T) {
	c := Counts{Retransmit: 1, Xmit: 2, Drop: 4, Consume: 8, Lost: 16}
	if c.Total() != 15 {
		t.Errorf("Total of %+v = %d, want 15 (lost events are not references)", c, c.Total())
	}
	v := probesCounts{Hits: [numHooks]uint64{1, 2, 4, 8}, Lost: 16}
	if got := countsFrom(&v); got != c {
		t.Errorf("countsFrom(%+v) = %+v, want %+v", v, got, c)
	}
}
