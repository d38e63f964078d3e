package blkback

import (
	"errors"
	"sync/atomic"

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
type grantCache struct {
	byRef map[gnttab.Ref]int32
	ents  []cacheEntry
	// An LRU list through ents: head is the most recently used.
	head, tail int32
	free       []int32 // unused entries
	one        [1]gnttab.Ref
	// tick counts lookups; an entry's used is the tick of its last one.
	tick uint64
	// maps counts the grants it mapped (the device's grant_maps).
	maps *atomic.Uint64
}

type cacheEntry struct {
	ref        gnttab.Ref
	m          gnttab.Mapping
	users      int32  // requests using the page now
	used       uint64 // the cache's tick at its last use
	prev, next int32
}

const none = -1

func newGrantCache(n int, maps *atomic.Uint64) *grantCache {
	c := &grantCache{byRef: make(map[gnttab.Ref]int32, n), ents: make([]cacheEntry, n),
		head: none, tail: none, free: make([]int32, n), maps: maps}
	for i := range c.free {
		c.free[i] = int32(n - 1 - i)
	}
	return c
}

// acquire returns ref's page from the cache, mapping and caching it if it
// is not there, and marks it used; false when it could not be cached (the
// caller then maps it for its request alone).
func (c *grantCache) acquire(g Grants, dom uint32, ref gnttab.Ref) ([]byte, bool) {
	if page, ok := c.get(ref); ok {
		return page, true
	}
	return c.add(g, dom, ref)
}

// get returns the cached page of ref and marks it used.
func (c *grantCache) get(ref gnttab.Ref) ([]byte, bool) {
	c.tick++
	i, ok := c.byRef[ref]
	if !ok {
		return nil, false
	}
	e := &c.ents[i]
	e.users++
	e.used = c.tick
	c.unlink(i)
	c.pushFront(i)
	return e.m.Mem, true
}

// add maps ref writable and caches it, evicting the least recently used
// idle grant if the cache is full. It fails when no entry can be had or
// the grant cannot be mapped writable; the caller then maps it for this
// request alone.
func (c *grantCache) add(g Grants, dom uint32, ref gnttab.Ref) ([]byte, bool) {
	if len(c.free) == 0 && !c.evict(g) {
		return nil, false
	}
	c.one[0] = ref
	m, err := g.Map(dom, c.one[:], true)
	if err != nil {
		return nil, false
	}
	c.maps.Add(1)
	i := c.free[len(c.free)-1]
	c.free = c.free[:len(c.free)-1]
	c.ents[i] = cacheEntry{ref: ref, m: m, users: 1, used: c.tick}
	c.byRef[ref] = i
	c.pushFront(i)
	return m.Mem, true
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
