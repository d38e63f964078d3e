package ebpf

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	cilium "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"blkdom/gnttab"
)

// DefaultPages is the default capacity of the maps that remember granted
// pages and completed grants. Both are LRU maps: when full, the grants that
// were least recently touched are forgotten.
const DefaultPages = 16384

// Options configure Load.
type Options struct {
	// GrantTable attaches kprobes on the kernel's gnttab_map_refs and
	// gnttab_unmap_refs, which learn which page holds which grant. It needs
	// a Xen kernel with kprobes; without it, pages are granted only through
	// MarkGranted. blkback sets it.
	GrantTable bool
	// Pages is the capacity of the granted-page and completed-grant maps;
	// 0 means DefaultPages.
	Pages int
}

// Probes are the loaded and attached BPF programs and their maps.
//
// MarkGranted, Complete, Counts and Global may be called from any goroutine;
// ReadEvent from one goroutine at a time.
//
// A nil *Probes is valid and watches nothing: Complete and MarkGranted do
// nothing, the counts stay zero and ReadEvent returns os.ErrClosed. So a
// caller keeps the nil that a failed Load returns and calls it regardless.
type Probes struct {
	maps  probesMaps
	links []link.Link
	// progs are the attached programs, kept open for Runs; stats is the
	// kernel's run-statistics switch, held while they are loaded (nil if
	// the kernel refused it).
	progs []namedProgram
	stats io.Closer

	closeOnce sync.Once
	closeErr  error

	events *ringbuf.Reader
	record ringbuf.Record // reused by ReadEvent

	mu   sync.Mutex // guards the scratch arrays of stamp
	keys [completeBatch]probesGrefKey
	vals [completeBatch]probesCompletion
	// keyViews[n] and valViews[n] hold keys[:n] and vals[:n] as the
	// interface values BatchUpdate takes, made once so that stamp does not
	// allocate one per call.
	keyViews, valViews [completeBatch + 1]any
}

// removeMemlock lifts RLIMIT_MEMLOCK, which kernels before 5.11 charge
// BPF maps against; later kernels charge the memory cgroup and ignore it,
// so failing to lift it (unprivileged) is not an error here: Load reports
// what the kernel refuses.
//
// cilium/ebpf's rlimit package does this too, but it probes the kernel
// from an init function, before main: in blkdom running as PID 1 /proc is
// not mounted yet then, and the library caches the failed probe (its BPF
// token lookup reads /proc/self/mountinfo once), which made every later
// Load fail in the driver domain.
func removeMemlock() {
	inf := unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
	unix.Setrlimit(unix.RLIMIT_MEMLOCK, &inf)
}

// completeBatch is how many grants Complete and Begin hand the kernel per
// bpf(2) call. A request has at most 11 segments, or more with indirect
// descriptors.
const completeBatch = 64

// tracepoints are the programs that look for late references, each attached
// to a raw tracepoint. Their argument lists differ between kernels after the
// arguments they read; raw tracepoints do not care.
type tracepoints struct {
	OnRetransmit *cilium.Program `ebpf:"on_retransmit"`
	OnXmit       *cilium.Program `ebpf:"on_xmit"`
	OnDrop       *cilium.Program `ebpf:"on_drop"`
	OnConsume    *cilium.Program `ebpf:"on_consume"`
}

// grantTable are the kprobe programs that fill the granted-page map.
type grantTable struct {
	OnMapRefs   *cilium.Program `ebpf:"on_map_refs"`
	OnUnmapRefs *cilium.Program `ebpf:"on_unmap_refs"`
}

// maxPages bounds Options.Pages: 2^24 entries of each map take about 2 GiB.
const maxPages = 1 << 24

// Load loads the probes and attaches them. Invalid Options are an error;
// every other error is a *LoadError, saying why this kernel cannot run them.
func Load(opts Options) (*Probes, error) {
	if opts.Pages < 0 || opts.Pages > maxPages {
		return nil, fmt.Errorf("ebpf: Options.Pages %d not in 0..%d", opts.Pages, maxPages)
	}
	p, err := load(opts)
	if err != nil {
		var le *LoadError
		if !errors.As(err, &le) {
			err = loadError(ReasonKernel, err)
		}
		return nil, err
	}
	return p, nil
}

func load(opts Options) (_ *Probes, err error) {
	removeMemlock()
	// The kernel's BTF, parsed once for all programs and dropped after Load.
	cache := btf.NewCache()
	if _, err := cache.Kernel(); err != nil {
		return nil, loadError(ReasonNoBTF, err)
	}

	spec, err := loadProbes()
	if err != nil {
		return nil, err
	}
	pages := opts.Pages
	if pages == 0 {
		pages = DefaultPages
	}
	spec.Maps[probesMapGranted].MaxEntries = uint32(pages)
	spec.Maps[probesMapCompleted].MaxEntries = uint32(pages)

	p := &Probes{}
	for n := range p.keyViews {
		p.keyViews[n], p.valViews[n] = p.keys[:n], p.vals[:n]
	}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	var tp tracepoints
	if err := spec.LoadAndAssign(&struct {
		*probesMaps
		*tracepoints
	}{&p.maps, &tp}, &cilium.CollectionOptions{Cache: cache}); err != nil {
		return nil, loadError(ReasonKernel, err)
	}
	// Counting runs costs the kernel two clock reads per run, only while
	// the probes are loaded; without it Runs reports zeros.
	p.stats, _ = cilium.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	for _, t := range []namedProgram{
		{tp.OnRetransmit, "tcp_retransmit_skb"},
		{tp.OnXmit, "net_dev_start_xmit"},
		{tp.OnDrop, "kfree_skb"},
		{tp.OnConsume, "consume_skb"},
	} {
		p.progs = append(p.progs, t)
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: t.name, Program: t.prog})
		if err != nil {
			return nil, loadError(ReasonKernel, fmt.Errorf("attach %s: %w", t.name, err))
		}
		p.links = append(p.links, l)
	}

	if opts.GrantTable {
		if err := p.attachGrantTable(spec, cache); err != nil {
			return nil, err
		}
	}

	if p.events, err = ringbuf.NewReader(p.maps.Events); err != nil {
		return nil, loadError(ReasonKernel, err)
	}
	return p, nil
}

func (p *Probes) attachGrantTable(spec *cilium.CollectionSpec, cache *btf.Cache) error {
	var gt grantTable
	err := spec.LoadAndAssign(&gt, &cilium.CollectionOptions{
		Cache:           cache,
		MapReplacements: map[string]*cilium.Map{probesMapGranted: p.maps.Granted},
	})
	if err != nil {
		return loadError(ReasonKernel, err)
	}
	for _, k := range []namedProgram{
		{gt.OnMapRefs, "gnttab_map_refs"},
		{gt.OnUnmapRefs, "gnttab_unmap_refs"},
	} {
		p.progs = append(p.progs, k)
		l, err := link.Kprobe(k.name, k.prog, nil)
		if err != nil {
			return loadError(ReasonNoKprobes, fmt.Errorf("kprobe %s: %w", k.name, err))
		}
		p.links = append(p.links, l)
	}
	return nil
}

// namedProgram is a program and the kernel function or tracepoint it is
// attached to.
type namedProgram struct {
	prog *cilium.Program
	name string
}

// Run is how often the program attached to Hook (a tracepoint or kernel
// function) has run: the evidence that a hook fired at all, whether or not
// it found a late reference.
type Run struct {
	Hook  string
	Count uint64
}

// Runs returns the run count of every attached program, in attach order
// (zeros if the kernel did not enable run statistics).
func (p *Probes) Runs() ([]Run, error) {
	if p == nil {
		return nil, nil
	}
	runs := make([]Run, 0, len(p.progs))
	for _, n := range p.progs {
		st, err := n.prog.Stats()
		if err != nil {
			return nil, fmt.Errorf("ebpf: run count of %s: %w", n.name, err)
		}
		runs = append(runs, Run{Hook: n.name, Count: st.RunCount})
	}
	return runs, nil
}

// Close detaches the probes and frees their maps. A ReadEvent blocked in
// another goroutine returns os.ErrClosed.
// Later calls return the first call's result; other methods return errors.
func (p *Probes) Close() error {
	if p == nil {
		return nil
	}
	p.closeOnce.Do(func() {
		var errs []error
		if p.events != nil {
			errs = append(errs, p.events.Close())
		}
		for _, l := range p.links {
			errs = append(errs, l.Close())
		}
		for _, n := range p.progs {
			errs = append(errs, n.prog.Close())
		}
		if p.stats != nil {
			errs = append(errs, p.stats.Close())
		}
		// Maps that were never created are nil, which Close accepts.
		errs = append(errs, p.maps.Close())
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}

// MarkGranted declares that page, the kernel address of a struct page, holds
// grant ref of domain dom, mapped now. In a Xen domain the grant-table kprobes
// do this; tests, which have no grants, use it with pages they learned.
func (p *Probes) MarkGranted(page uint64, dom uint16, ref gnttab.Ref) error {
	if p == nil {
		return nil
	}
	now, err := monotonicNow()
	if err != nil {
		return err
	}
	g := probesGrant{MappedNs: now, Gref: uint32(ref), Domid: dom}
	if err := p.maps.Granted.Update(&page, &g, cilium.UpdateAny); err != nil {
		return fmt.Errorf("ebpf: mark page granted: %w", err)
	}
	return nil
}

// Complete records that the request which used grants refs of domain dom on
// disk has completed: blkback calls it when it writes the response, after
// which the guest may reuse the pages. From then on every network buffer
// that references one of those pages counts against disk, until the grant is
// mapped again or Begin is called for it. disk is any number blkback chooses
// to name the disk, unique among the disks it serves. Complete does not
// allocate.
func (p *Probes) Complete(dom uint16, disk uint32, refs []gnttab.Ref) error {
	if p == nil {
		return nil
	}
	now, err := monotonicNow()
	if err != nil {
		return err
	}
	return p.stamp(dom, disk, refs, now)
}

// Begin records that a new request uses grants refs of domain dom, which are
// already mapped: persistent grants, which the grant-table kprobes see
// mapped only once. The request's own network buffers are then not late.
// (The price: a buffer left over from the grant's previous request is not
// counted either from now on, as nothing tells the two apart.) Grants that
// are mapped for each request need no Begin. Begin does not allocate.
func (p *Probes) Begin(dom uint16, refs []gnttab.Ref) error {
	if p == nil {
		return nil
	}
	// A completion at time 0 precedes every mapping.
	return p.stamp(dom, 0, refs, 0)
}

// stamp sets the completion time of grants refs of dom to ns, on disk.
func (p *Probes) stamp(dom uint16, disk uint32, refs []gnttab.Ref, ns uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(refs) > 0 {
		n := min(len(refs), completeBatch)
		for i, ref := range refs[:n] {
			p.keys[i] = probesGrefKey{Domid: dom, Gref: uint32(ref)}
			p.vals[i] = probesCompletion{CompletedNs: ns, Disk: disk}
		}
		if _, err := p.maps.Completed.BatchUpdate(p.keyViews[n], p.valViews[n], nil); err != nil {
			return fmt.Errorf("ebpf: record grants of domain %d: %w", dom, err)
		}
		refs = refs[n:]
	}
	return nil
}

// Counts returns the late references counted against disk so far.
func (p *Probes) Counts(disk uint32) (Counts, error) {
	if p == nil {
		return Counts{}, nil
	}
	var v probesCounts
	err := p.maps.DiskCounts.Lookup(&disk, &v)
	if errors.Is(err, cilium.ErrKeyNotExist) {
		return Counts{}, nil
	}
	if err != nil {
		return Counts{}, fmt.Errorf("ebpf: read counts of disk %d: %w", disk, err)
	}
	return countsFrom(&v), nil
}

// LateRefs is the number of late references counted against disk at all
// hooks: Counts(disk).Total().
func (p *Probes) LateRefs(disk uint32) (uint64, error) {
	c, err := p.Counts(disk)
	return c.Total(), err
}

// Global returns the late references counted against all disks so far,
// including disks whose own counter could not be created (more than 4096).
func (p *Probes) Global() (Counts, error) {
	if p == nil {
		return Counts{}, nil
	}
	var (
		zero uint32
		v    probesCounts
	)
	if err := p.maps.GlobalCounts.Lookup(&zero, &v); err != nil {
		return Counts{}, fmt.Errorf("ebpf: read global counts: %w", err)
	}
	return countsFrom(&v), nil
}

// ReadEvent waits for the next late reference and stores it in e. It returns
// os.ErrDeadlineExceeded after the deadline set by SetReadDeadline, and
// os.ErrClosed once Close was called. It does not allocate.
func (p *Probes) ReadEvent(e *Event) error {
	if p == nil {
		return os.ErrClosed
	}
	if err := p.events.ReadInto(&p.record); err != nil {
		return err
	}
	return e.decode(p.record.RawSample)
}

// SetReadDeadline makes ReadEvent give up at t; the zero time waits forever.
func (p *Probes) SetReadDeadline(t time.Time) {
	if p != nil {
		p.events.SetDeadline(t)
	}
}

// monotonicNow reads the kernel's CLOCK_MONOTONIC, the clock of the BPF
// programs' bpf_ktime_get_ns. (Go's monotonic clock is the same clock, but
// it has no absolute reading, and relating the two costs precision that the
// ordering of a completion and the next mapping may need.)
func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("ebpf: read monotonic clock: %w", err)
	}
	return uint64(ts.Nano()), nil
}
