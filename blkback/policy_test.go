package blkback

import "testing"

func TestChoosePolicy(t *testing.T) {
	src := func(disk, domain, flag string) []policySource {
		return []policySource{{disk, "disk"}, {domain, "domain"}, {flag, "flag"}}
	}
	tests := []struct {
		name    string
		sources []policySource
		safe    bool
		network string
		want    cachePolicy
		wantErr bool
	}{
		{"local, nothing set", src("", "", ""), false, "", policyDirect, false},
		{"nfs: page cache", src("", "", ""), false, "nfs", policyBuffered, false},
		{"iscsi: page cache", src("", "", "auto"), false, "iscsi", policyBuffered, false},
		{"nfs but direct-io-safe", src("", "", ""), true, "nfs", policyDirect, false},
		{"disk key wins", src("grant-copy", "buffered", "direct"), false, "", policyGrantCopy, false},
		{"domain key next", src("", "buffered", "direct"), false, "", policyBuffered, false},
		{"flag last", src("auto", "", "grant-copy"), false, "nfs", policyGrantCopy, false},
		{"explicit direct on nfs", src("direct", "", ""), false, "nfs", policyDirect, false},
		{"unknown value skipped", src("fast", "", ""), false, "nfs", policyBuffered, true},
		{"unknown then valid", src("fast", "direct", ""), false, "nfs", policyDirect, true},
	}
	for _, tt := range tests {
		got, why, err := choosePolicy(tt.sources, tt.safe, tt.network)
		if got != tt.want || (err != nil) != tt.wantErr || why == "" {
			t.Errorf("%s: %v (%s), %v; want %v, error %v", tt.name, got, why, err, tt.want, tt.wantErr)
		}
	}
}

// Every name parses, each explicit one to the policy whose name it is,
// and nothing else parses.
func TestCachePolicyNames(t *testing.T) {
	for _, p := range CachePolicies {
		if got, err := ParseCachePolicy(string(p)); got != p || err != nil {
			t.Errorf("ParseCachePolicy(%q) = %q, %v", p, got, err)
		}
		if q, ok := resolve(p); ok != (p != CacheAuto) || ok && q.String() != string(p) {
			t.Errorf("%q resolves to %v (%v)", p, q, ok)
		}
	}
	for _, s := range []string{"", "bogus", "Direct", "auto "} {
		if _, err := ParseCachePolicy(s); err == nil {
			t.Errorf("ParseCachePolicy(%q) succeeded", s)
		}
	}
	if got, want := CachePolicyNames(), "auto, direct, buffered or grant-copy"; got != want {
		t.Errorf("CachePolicyNames() = %q, want %q", got, want)
	}
}
