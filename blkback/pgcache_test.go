package blkback

import (
	"sync/atomic"
	"testing"

	"blkdom/gnttab"
)

// countingGrants maps grants as distinct pages of plain memory and counts
// the calls, for the cache's decisions.
type countingGrants struct {
	Grants
	maps, unmaps int
}

func (g *countingGrants) Map(_ uint32, refs []gnttab.Ref, _ bool) (gnttab.Mapping, error) {
	g.maps++
	return gnttab.Mapping{Mem: make([]byte, len(refs)*gnttab.PageSize)}, nil
}

func (g *countingGrants) Unmap(gnttab.Mapping) error {
	g.unmaps++
	return nil
}

// A frontend that cycles through more grants than the cache holds does
// not make it evict a grant before each use: once full, the cache keeps
// what it has, and the grants beyond it are left to their requests. A
// working set that moves on still replaces the cold grants.
func TestGrantCacheDoesNotThrash(t *testing.T) {
	const size = 64
	g := &countingGrants{}
	var maps atomic.Uint64
	c := newGrantCache(size, &maps)
	use := func(ref gnttab.Ref) bool {
		_, ok := c.acquire(g, 1, ref)
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
