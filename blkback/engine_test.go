package blkback_test

import (
	"fmt"
	"testing"

	"blkdom/blkback"
	"blkdom/blkfront"
	"blkdom/xensim"
)

// Both I/O engines serve every cache policy, with and without persistent
// grants, with 16 requests of up to 128 KiB in flight: every write reads
// back as written.
func TestEnginesAndPolicies(t *testing.T) {
	for _, engine := range blkback.Engines {
		for _, policy := range []blkback.CachePolicy{blkback.CacheDirect, blkback.CacheBuffered, blkback.CacheGrantCopy} {
			for _, persistent := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/persistent=%v", engine, policy, persistent), func(t *testing.T) {
					bed := newBedWith(t, blkback.Options{Engine: engine, Cache: func() blkback.CachePolicy { return policy }})
					path, _ := newImage(t, 8<<20)
					f := connect(t, bed, xensim.Disk{Frontend: 1, Devid: 51712, Params: path},
						blkfront.Options{Persistent: persistent, IndirectSegments: 32})
					if err := workload(f, 16, 20, 7); err != nil {
						t.Fatal(err)
					}
					closeFrontend(t, f)
				})
			}
		}
	}
}
