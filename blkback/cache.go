package blkback

import (
	"fmt"
	"slices"
	"strings"
)

// CachePolicy is a cache policy as a person names it: on serve's -cache
// flag, in a domain's blkdom/cache key or in a disk's blkdom-cache key.
// This is the one list of those names; the flag's help text and the
// appliance's configuration check use it.
type CachePolicy string

// The cache policies. README.md ("Cache policy") gives the reasoning.
const (
	// CacheAuto lets the backend choose per image (see choosePolicy).
	CacheAuto CachePolicy = "auto"
	// CacheDirect opens the image with O_DIRECT: I/O straight between
	// the image and the guest's mapped pages.
	CacheDirect CachePolicy = "direct"
	// CacheBuffered goes through the page cache, which the kernel copies
	// into the guest's mapped pages.
	CacheBuffered CachePolicy = "buffered"
	// CacheGrantCopy uses O_DIRECT into blkdom's own pages and grant
	// copies to and from the guest: no guest page reaches the storage
	// stack.
	CacheGrantCopy CachePolicy = "grant-copy"
)

// CachePolicies lists every cache policy, CacheAuto first.
var CachePolicies = []CachePolicy{CacheAuto, CacheDirect, CacheBuffered, CacheGrantCopy}

// policyNames names each way data travels by its explicit policy: the one
// table between the names and the data path's policies.
var policyNames = [...]CachePolicy{
	policyDirect:    CacheDirect,
	policyBuffered:  CacheBuffered,
	policyGrantCopy: CacheGrantCopy,
}

// resolve is how data travels under an explicit policy; ok is false for
// CacheAuto and for unknown names.
func resolve(p CachePolicy) (_ cachePolicy, ok bool) {
	i := slices.Index(policyNames[:], p)
	return cachePolicy(max(i, 0)), i >= 0
}

// CachePolicyNames lists the policies for help texts and error messages:
// "auto, direct, buffered or grant-copy".
func CachePolicyNames() string {
	names := make([]string, len(CachePolicies))
	for i, p := range CachePolicies {
		names[i] = string(p)
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// ParseCachePolicy returns s as a cache policy, or an error naming the
// valid ones.
func ParseCachePolicy(s string) (CachePolicy, error) {
	p := CachePolicy(s)
	if _, explicit := resolve(p); !explicit && p != CacheAuto {
		return "", fmt.Errorf("unknown cache policy %q (want %s)", s, CachePolicyNames())
	}
	return p, nil
}
