package blkback

import (
	"errors"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"blkdom/gnttab"
)

// grantCache holds a ring's persistent grants: pages the frontend keeps
// granted for the whole connection, so the backend maps each once instead
// of once per request. It is bounded; when full, the least recently used
// grant is unmapped to make room only if it is cold: idle and not used in
// the last two cache-fulls of lookups. A frontend cycling through more
// grants than the cache holds would otherwise evict each grant just
// before its next use, and pay a map and an unmap of one page for every
// page it sends; instead the grants that do not fit are mapped with their
// request, in one batch, while the cache keeps serving the ones it has. Its storage is
// allocated up front: lookups, insertions and evictions allocate nothing.
// Only the ring's loop uses it.
//
// Each grant is mapped alone, so consecutive maps place a request's new
// grants one below the other, in the reverse of the request's order; the
// grants of a request that have no second mapping yet are mapped once
// more, together, in its order (their alt pages). Linux blkfront reuses
// a request's grants for a later request in the reverse order, so one of
// the two mappings usually has a request's pages in its order, one after
// the other, and its transfer goes to the kernel as one iovec (see
// iovecs).
type grantCache struct {
	byRef map[gnttab.Ref]int32
	ents  []cacheEntry
	// An LRU list through ents: head is the most recently used.
	head, tail int32
	free       []int32 // unused entries
	one        [1]gnttab.Ref
	// The batches of second mappings, with room for a batch's entries
	// (pend) and refs. A batch stays mapped while any of its grants is
	// cached, so altPages, the pages of all batches, is held to the
	// cache's size: a frontend that keeps one grant of each batch in use
	// while the others are evicted cannot make the ring map more than
	// twice the cache. After a second mapping fails (noAlts), the ring
	// makes no more: a map that keeps failing would cost every request a
	// hypercall.
	alts     []altBatch
	freeAlts []int32
	altPages int
	noAlts   bool
	pend     []int32
	refs     []gnttab.Ref
	// The ring's request in hand: each segment's entry and second mapping
	// (acquirePages), and room for the iovecs of those (iovecs).
	segEnt []int32
	segAlt [][]byte
	altIov []unix.Iovec
	// tick counts lookups; an entry's used is the tick of its last one.
	tick uint64
	// maps counts the grants it mapped (the device's grant_maps).
	maps *atomic.Uint64
}

type cacheEntry struct {
	ref gnttab.Ref
	m   gnttab.Mapping
	// alt is the page's second mapping, in batch alts[altBatch]; nil if
	// it has none.
	alt        []byte
	altBatch   int32
	users      int32  // requests using the page now
	used       uint64 // the cache's tick at its last use
	prev, next int32
}

// altBatch is one second mapping of a request's grants, and how many of
// them are still cached.
type altBatch struct {
	m     gnttab.Mapping
	users int32
}

const none = -1

// newGrantCache makes a cache of n grants for a ring whose requests have
// up to maxSegs segments.
func newGrantCache(n, maxSegs int, maps *atomic.Uint64) *grantCache {
	c := &grantCache{byRef: make(map[gnttab.Ref]int32, n), ents: make([]cacheEntry, n),
		head: none, tail: none, free: make([]int32, n), maps: maps,
		alts: make([]altBatch, n), freeAlts: make([]int32, n),
		pend: make([]int32, 0, min(n, gnttab.MaxBatch)), refs: make([]gnttab.Ref, 0, min(n, gnttab.MaxBatch)),
		segEnt: make([]int32, maxSegs), segAlt: make([][]byte, maxSegs), altIov: make([]unix.Iovec, maxSegs)}
	for i := range c.free {
		c.free[i] = int32(n - 1 - i)
		c.freeAlts[i] = int32(n - 1 - i)
	}
	return c
}

// acquire returns ref's page from the cache, mapping and caching it if it
// is not there, and marks it used; with the page, its entry (for alt).
// false when it could not be cached (the caller then maps it for its
// request alone).
func (c *grantCache) acquire(g Grants, dom uint32, ref gnttab.Ref) ([]byte, int32, bool) {
	if page, i, ok := c.get(ref); ok {
		return page, i, true
	}
	return c.add(g, dom, ref)
}

// get returns the cached page of ref and marks it used.
func (c *grantCache) get(ref gnttab.Ref) ([]byte, int32, bool) {
	c.tick++
	i, ok := c.byRef[ref]
	if !ok {
		return nil, none, false
	}
	e := &c.ents[i]
	e.users++
	e.used = c.tick
	c.unlink(i)
	c.pushFront(i)
	return e.m.Mem, i, true
}

// mapAlts maps, once more and as one batch in the request's order, the
// grants of a request's segments (their entries, none where a segment's
// page is not cached) that have no second mapping yet; a grant named
// twice is mapped once. Without it (fewer than two such grants, the
// bound reached, or a failed map) those pages just have no alt.
func (c *grantCache) mapAlts(g Grants, dom uint32, segs []int32) {
	pend := c.pend[:0]
	for _, i := range segs {
		if i != none && c.ents[i].altBatch == none && len(pend) < cap(c.refs) {
			c.ents[i].altBatch = pending
			pend = append(pend, i)
		}
	}
	var m gnttab.Mapping
	err := errNoAlt
	if len(pend) >= 2 && !c.noAlts && len(c.freeAlts) > 0 && c.altPages+len(pend) <= len(c.ents) {
		c.refs = c.refs[:0]
		for _, i := range pend {
			c.refs = append(c.refs, c.ents[i].ref)
		}
		m, err = g.Map(dom, c.refs, true)
		c.noAlts = err != nil
	}
	if err != nil {
		for _, i := range pend {
			c.ents[i].altBatch = none
		}
		return
	}
	b := c.freeAlts[len(c.freeAlts)-1]
	c.freeAlts = c.freeAlts[:len(c.freeAlts)-1]
	c.alts[b] = altBatch{m: m, users: int32(len(pend))}
	c.altPages += len(pend)
	for j, i := range pend {
		c.ents[i].alt = m.Mem[j*gnttab.PageSize : (j+1)*gnttab.PageSize]
		c.ents[i].altBatch = b
	}
}

// pending marks an entry mapAlts is collecting, so a grant named twice
// in a request joins its batch once.
const pending = -2

// errNoAlt is mapAlts' reason not to map a batch.
var errNoAlt = errors.New("no second mapping")

// add maps ref writable and caches it, evicting the least recently used
// idle grant if the cache is full. It fails when no entry can be had or
// the grant cannot be mapped writable; the caller then maps it for this
// request alone.
func (c *grantCache) add(g Grants, dom uint32, ref gnttab.Ref) ([]byte, int32, bool) {
	if len(c.free) == 0 && !c.evict(g) {
		return nil, none, false
	}
	c.one[0] = ref
	m, err := g.Map(dom, c.one[:], true)
	if err != nil {
		return nil, none, false
	}
	c.maps.Add(1)
	i := c.free[len(c.free)-1]
	c.free = c.free[:len(c.free)-1]
	c.ents[i] = cacheEntry{ref: ref, m: m, altBatch: none, users: 1, used: c.tick}
	c.byRef[ref] = i
	c.pushFront(i)
	return m.Mem, i, true
}

// put marks one use of ref finished.
func (c *grantCache) put(ref gnttab.Ref) {
	if i, ok := c.byRef[ref]; ok {
		c.ents[i].users--
	}
}

// evict unmaps the least recently used idle grant, if it is cold.
func (c *grantCache) evict(g Grants) bool {
	cold := uint64(2 * len(c.ents))
	for i := c.tail; i != none; i = c.ents[i].prev {
		if c.tick-c.ents[i].used < cold {
			return false // everything from here on was used lately
		}
		if c.ents[i].users == 0 {
			c.remove(g, i)
			return true
		}
	}
	return false
}

func (c *grantCache) remove(g Grants, i int32) error {
	e := &c.ents[i]
	err := g.Unmap(e.m)
	if b := e.altBatch; b != none {
		if c.alts[b].users--; c.alts[b].users == 0 {
			err = errors.Join(err, g.Unmap(c.alts[b].m))
			c.altPages -= len(c.alts[b].m.Mem) / gnttab.PageSize
			c.alts[b] = altBatch{}
			c.freeAlts = append(c.freeAlts, b)
		}
	}
	delete(c.byRef, e.ref)
	c.unlink(i)
	*e = cacheEntry{}
	c.free = append(c.free, i)
	return err
}

// drop unmaps every cached grant, at disconnect.
func (c *grantCache) drop(g Grants) error {
	var err error
	for c.head != none {
		err = errors.Join(err, c.remove(g, c.head))
	}
	return err
}

func (c *grantCache) unlink(i int32) {
	e := &c.ents[i]
	if e.prev != none {
		c.ents[e.prev].next = e.next
	} else if c.head == i {
		c.head = e.next
	}
	if e.next != none {
		c.ents[e.next].prev = e.prev
	} else if c.tail == i {
		c.tail = e.prev
	}
	e.prev, e.next = none, none
}

func (c *grantCache) pushFront(i int32) {
	e := &c.ents[i]
	e.prev, e.next = none, c.head
	if c.head != none {
		c.ents[c.head].prev = i
	}
	c.head = i
	if c.tail == none {
		c.tail = i
	}
}
