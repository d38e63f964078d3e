package blkback

import (
	"testing"
)

// Options beyond what the protocol can express are clamped, and a disk's
// queues fit in DiskMemory.
func TestOptionsClamped(t *testing.T) {
	perQueue := Options{}.withDefaults().queueMemory()
	if perQueue < 25<<20 || perQueue > 26<<20 {
		t.Errorf("one default queue costs %d bytes; the documentation says 25.4 MiB", perQueue)
	}
	tests := []struct {
		name string
		in   Options
		want func(Options) bool
	}{
		{"indirect segments above 8 pages' worth", Options{MaxIndirectSegments: 5000},
			func(o Options) bool { return o.MaxIndirectSegments == 4096 }},
		{"indirect segments one above the edge", Options{MaxIndirectSegments: 4097},
			func(o Options) bool { return o.MaxIndirectSegments == 4096 }},
		{"indirect segments at the edge", Options{MaxIndirectSegments: 4096},
			func(o Options) bool { return o.MaxIndirectSegments == 4096 }},
		{"indirect segments below a direct request's", Options{MaxIndirectSegments: 1},
			func(o Options) bool { return o.MaxIndirectSegments == 11 }},
		{"indirect segments at a direct request's", Options{MaxIndirectSegments: 11},
			func(o Options) bool { return o.MaxIndirectSegments == 11 }},
		{"indirect segments one above a direct request's", Options{MaxIndirectSegments: 12},
			func(o Options) bool { return o.MaxIndirectSegments == 12 }},
		{"indirect segments by default", Options{},
			func(o Options) bool { return o.MaxIndirectSegments == 256 }},
		{"no indirect", Options{MaxIndirectSegments: -1},
			func(o Options) bool { return o.MaxIndirectSegments == 0 }},
		{"ring order above Linux's", Options{MaxRingPageOrder: 9},
			func(o Options) bool { return o.MaxRingPageOrder == 4 }},
		{"negative workers", Options{Workers: -3},
			func(o Options) bool { return o.Workers == 8 }},
		{"more workers than slots", Options{Workers: 100000},
			func(o Options) bool { return o.Workers == 512 }},
		{"queues within the default budget", Options{MaxQueues: 64},
			func(o Options) bool { return o.MaxQueues == int(defaultDiskMemory/perQueue) }},
		{"a budget of two queues", Options{MaxQueues: 64, DiskMemory: 2*perQueue + 1},
			func(o Options) bool { return o.MaxQueues == 2 }},
		{"a budget below one queue still offers one", Options{MaxQueues: 4, DiskMemory: 1},
			func(o Options) bool { return o.MaxQueues == 1 }},
		{"no budget", Options{MaxQueues: 64, DiskMemory: -1},
			func(o Options) bool { return o.MaxQueues == 64 }},
	}
	for _, tt := range tests {
		if o := tt.in.withDefaults(); !tt.want(o) {
			t.Errorf("%s: got workers %d, queues %d, ring order %d, indirect %d", tt.name,
				o.Workers, o.MaxQueues, o.MaxRingPageOrder, o.MaxIndirectSegments)
		}
	}
}
