package blkback

import (
	"errors"
	"sync/atomic"
	"testing"

	"blkdom/blkif"
	"blkdom/gnttab"
)

// countingGrants maps grants as distinct pages of plain memory and counts
// the calls, for the cache's decisions.
type countingGrants struct {
	Grants
	maps, unmaps int
	pages        int  // mapped now
	refuseBatch  bool // refuse maps of more than one grant
}

func (g *countingGrants) Map(_ uint32, refs []gnttab.Ref, _ bool) (gnttab.Mapping, error) {
	g.maps++
	if g.refuseBatch && len(refs) > 1 {
		return gnttab.Mapping{}, errors.New("refused")
	}
	g.pages += len(refs)
	return gnttab.Mapping{Mem: make([]byte, len(refs)*gnttab.PageSize)}, nil
}

func (g *countingGrants) Unmap(m gnttab.Mapping) error {
	g.unmaps++
	g.pages -= len(m.Mem) / gnttab.PageSize
	return nil
}

func (g *countingGrants) livePages() int { return g.pages }

// A frontend that cycles through more grants than the cache holds does
// not make it evict a grant before each use: once full, the cache keeps
// what it has, and the grants beyond it are left to their requests. A
// working set that moves on still replaces the cold grants.
func TestGrantCacheDoesNotThrash(t *testing.T) {
	const size = 64
	g := &countingGrants{}
	var maps atomic.Uint64
	c := newGrantCache(size, 11, &maps)
	use := func(ref gnttab.Ref) bool {
		_, _, ok := c.acquire(g, 1, ref)
		if ok {
			c.put(ref)
		}
		return ok
	}
	// Cycle 96 grants, 10 times: the first 64 are cached, the rest not.
	hits := 0
	for round := range 10 {
		for ref := range gnttab.Ref(96) {
			if use(ref) && round > 0 {
				hits++
			}
		}
	}
	if g.unmaps != 0 {
		t.Errorf("cycling 96 grants through a cache of 64 evicted %d times", g.unmaps)
	}
	if hits != 9*size {
		t.Errorf("%d hits in the last 9 rounds, want %d (the 64 cached grants each round)", hits, 9*size)
	}
	if maps.Load() != size || g.maps != size {
		t.Errorf("the cache counted %d maps and made %d, want %d: each cached grant once", maps.Load(), g.maps, size)
	}
	// The working set moves on to 64 other grants: after a cache-full of
	// lookups the old ones are cold and make room.
	for range 3 {
		for ref := range gnttab.Ref(size) {
			use(1000 + ref)
		}
	}
	for ref := range gnttab.Ref(size) {
		if _, ok := c.byRef[1000+ref]; !ok {
			t.Fatalf("grant %d of the new working set is not cached after 3 rounds", 1000+ref)
		}
	}
}

// The grants a request brings get a second mapping, together, in the
// request's order; that batch is unmapped when its last grant leaves the
// cache, and a disconnect leaves nothing mapped.
func TestGrantCacheAltBatches(t *testing.T) {
	g := &countingGrants{}
	var maps atomic.Uint64
	c := newGrantCache(8, 11, &maps)
	request := func(refs ...gnttab.Ref) []int32 {
		ents := make([]int32, len(refs))
		for j, ref := range refs {
			_, e, ok := c.acquire(g, 1, ref)
			if !ok {
				t.Fatalf("grant %d not cached", ref)
			}
			ents[j] = e
		}
		c.mapAlts(g, 1, ents)
		for _, ref := range refs {
			c.put(ref)
		}
		return ents
	}
	first := request(1, 2, 3, 4)
	if g.maps != 5 {
		t.Fatalf("%d maps for a request of 4 new grants, want 5 (each alone, then the 4 together)", g.maps)
	}
	for j, e := range first {
		alt := c.ents[e].alt
		if alt == nil {
			t.Fatalf("grant %d has no second mapping", j+1)
		}
		if j > 0 && !adjacent(c.ents[first[j-1]].alt, alt) {
			t.Errorf("grant %d's second mapping does not follow grant %d's", j+1, j)
		}
	}
	// Reused grants and a lone new one get no new batch.
	again := request(4, 3, 2, 1, 5)
	if g.maps != 6 {
		t.Errorf("%d maps after a request reusing 4 grants and adding 1, want 6", g.maps)
	}
	if c.ents[again[4]].alt != nil {
		t.Error("a lone new grant got a second mapping")
	}
	// Grants first seen alone get their second mapping when a request
	// names two of them; a grant named twice joins it once.
	request(6)
	request(7)
	if g.maps != 8 {
		t.Fatalf("%d maps after two lone grants, want 8", g.maps)
	}
	both := request(7, 6, 7)
	if g.maps != 9 || c.ents[both[0]].alt == nil || !adjacent(c.ents[both[0]].alt, c.ents[both[1]].alt) {
		t.Errorf("grants 7 and 6, named again together: %d maps, want 9, and 6's second page right after 7's", g.maps)
	}
	if b := c.ents[both[0]].altBatch; c.alts[b].users != 2 {
		t.Errorf("the batch of grants 7 and 6 counts %d users, want 2", c.alts[b].users)
	}
	// Evicting three of the first batch's four grants keeps it; the
	// fourth unmaps it.
	for _, e := range first[:3] {
		if err := c.remove(g, e); err != nil {
			t.Fatal(err)
		}
	}
	if g.unmaps != 3 {
		t.Errorf("%d unmaps after evicting 3 grants of a batch of 4, want 3 (the batch stays)", g.unmaps)
	}
	if err := c.drop(g); err != nil {
		t.Fatal(err)
	}
	if g.unmaps != g.maps {
		t.Errorf("after drop: %d maps, %d unmaps", g.maps, g.unmaps)
	}
}

// adjacent reports whether b starts right where a ends (a's capacity
// reaches into b).
func adjacent(a, b []byte) bool {
	return cap(a) > len(a) && &a[:len(a)+1][len(a)] == &b[0]
}

// A transfer takes whichever mapping has the request's pages in its order,
// one after the other: persistent grants mapped one by one lie in the
// reverse order, their second mapping in the request's. A segment that
// does not start where the one before ends starts a new iovec.
func TestIovecsTakeTheOrderedMapping(t *testing.T) {
	const n, page = 4, gnttab.PageSize
	mem := make([]byte, 2*n*page)
	r := &ring{cache: newGrantCache(8, n, new(atomic.Uint64))}
	w := newScratch(n, false)
	req := &blkif.Request{NSegs: n, Segs: make([]blkif.Segment, n)}
	alt := r.cache.segAlt
	for i := range n {
		req.Segs[i] = blkif.Segment{First: 0, Last: 7}
		w.pages[i] = mem[(n-1-i)*page : (n-i)*page]
		alt[i] = mem[(n+i)*page : (n+i+1)*page]
	}
	if iov := r.iovecs(w, req); len(iov) != 1 || iov[0].Base != &alt[0][0] || iov[0].Len != n*page {
		t.Errorf("%d iovecs (first at %p, %d bytes), want one of %d bytes at the second mapping %p",
			len(iov), iov[0].Base, iov[0].Len, n*page, &alt[0][0])
	}
	req.Segs[2].First = 1 // a gap before segment 2
	if iov := r.iovecs(w, req); len(iov) != 2 || iov[0].Len != 2*page || iov[1].Len != 2*page-512 {
		t.Errorf("with a gap: %d iovecs %v, want 2 (8192 and 7680 bytes)", len(iov), iov)
	}
	req.Segs[2].First = 0
	alt[3] = nil // a page without a second mapping: the first mapping only
	if iov := r.iovecs(w, req); len(iov) != n || iov[0].Base != &w.pages[0][0] {
		t.Errorf("without every second mapping: %d iovecs, want %d of the first mapping", len(iov), n)
	}
}

// A frontend that keeps one grant of each batch in use while the cache
// evicts the others cannot make the ring map more than twice the cache:
// a batch stays mapped while any of its grants is cached, and the second
// mappings stop when their pages would outnumber the cache's entries.
func TestGrantCacheAltBounded(t *testing.T) {
	const size = 16
	g := &countingGrants{}
	c := newGrantCache(size, 11, new(atomic.Uint64))
	var keep []gnttab.Ref // one grant of each request, used by every request
	next := gnttab.Ref(1)
	for round := range 200 {
		var used []gnttab.Ref
		var ents []int32
		for range 4 {
			if _, e, ok := c.acquire(g, 1, next); ok {
				used = append(used, next)
				ents = append(ents, e)
			}
			next++
		}
		c.mapAlts(g, 1, ents)
		for _, ref := range keep {
			if _, _, ok := c.acquire(g, 1, ref); ok {
				used = append(used, ref)
			}
		}
		for _, ref := range used {
			c.put(ref)
		}
		if len(used) > 0 && len(keep) < size/2 {
			keep = append(keep, used[0])
		}
		if live := g.livePages(); live > 2*size {
			t.Fatalf("round %d: %d pages mapped for a cache of %d", round, live, size)
		}
	}
	if err := c.drop(g); err != nil {
		t.Fatal(err)
	}
	if live := g.livePages(); live != 0 {
		t.Errorf("%d pages still mapped after drop", live)
	}
}

// A second mapping that fails is not tried again for every request: the
// ring stops making them, and its requests go on with their first
// mappings.
func TestGrantCacheAltFailureStops(t *testing.T) {
	g := &countingGrants{refuseBatch: true}
	c := newGrantCache(64, 11, new(atomic.Uint64))
	for r := range 5 {
		refs := []gnttab.Ref{gnttab.Ref(10 * r), gnttab.Ref(10*r + 1), gnttab.Ref(10*r + 2)}
		ents := make([]int32, len(refs))
		for j, ref := range refs {
			var ok bool
			if _, ents[j], ok = c.acquire(g, 1, ref); !ok {
				t.Fatalf("grant %d not cached", ref)
			}
		}
		c.mapAlts(g, 1, ents)
		for j, ref := range refs {
			if c.ents[ents[j]].alt != nil || c.ents[ents[j]].altBatch != none {
				t.Fatalf("grant %d has a second mapping after a refused map", ref)
			}
			c.put(ref)
		}
	}
	if want := 5*3 + 1; g.maps != want {
		t.Errorf("%d maps for 5 requests of 3 new grants with second mappings refused, want %d (one refused batch)", g.maps, want)
	}
}
