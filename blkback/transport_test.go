package blkback

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"blkdom/blkif"
)

// Whatever a frontend writes into its xenstore directory, parsing its
// ring keys neither panics nor accepts more than the backend offered,
// reads a bounded number of keys, and accepts only values that are exactly
// the strict decimal the keys hold. The input is the frontend directory as
// "key=value" lines.
func FuzzFrontendKeys(f *testing.F) {
	f.Add("protocol=x86_64-abi\nevent-channel=5\nring-ref=8\nfeature-persistent=1", uint8(4), uint8(4))
	f.Add("ring-page-order=2\nevent-channel=5\nring-ref0=8\nring-ref1=9\nring-ref2=10\nring-ref3=11", uint8(1), uint8(4))
	f.Add("protocol=x86_32-abi\nmulti-queue-num-queues=2\nqueue-0/event-channel=5\nqueue-0/ring-ref=8\n"+
		"queue-1/event-channel=6\nqueue-1/ring-ref=9", uint8(2), uint8(0))
	f.Add("multi-queue-num-queues=2\nring-page-order=1\nqueue-0/event-channel=5\nqueue-0/ring-ref0=8\nqueue-0/ring-ref1=7\n"+
		"queue-1/event-channel=6\nqueue-1/ring-ref0=9\nqueue-1/ring-ref1=4294967295", uint8(8), uint8(1))
	f.Add("ring-page-order=4294967295\nmulti-queue-num-queues=4294967295\nevent-channel=-1\nring-ref=+1\nprotocol=arm", uint8(255), uint8(255))
	f.Fuzz(func(t *testing.T, dir string, mq, mo uint8) {
		const fe = "/local/domain/1/device/vbd/51712"
		maxQueues, maxOrder := int(mq%9), int(mo%5)
		kv := map[string]string{}
		for _, line := range strings.Split(dir, "\n") {
			k, v, _ := strings.Cut(line, "=")
			kv[fe+"/"+k] = v
		}
		reads := 0
		read := func(p string) (string, error) {
			reads++
			if v, ok := kv[p]; ok {
				return v, nil
			}
			return "", syscall.ENOENT
		}
		tr, err := parseTransport(read, fe, maxQueues, maxOrder)
		if limit := 4 + maxQueues*(1+1<<maxOrder); reads > limit {
			t.Fatalf("read %d keys, more than the %d a frontend within the offer needs", reads, limit)
		}
		if err != nil {
			return
		}
		if n := len(tr.queues); n < 1 || n > maxQueues {
			t.Fatalf("accepted %d queues, %d offered", n, maxQueues)
		}
		if p := kv[fe+"/protocol"]; tr.abi.Name != p && !(p == "" && tr.abi == blkif.X86_32) {
			t.Fatalf("protocol %q read as %s", p, tr.abi.Name)
		}
		if tr.persistent != (kv[fe+"/feature-persistent"] == "1") {
			t.Fatalf("feature-persistent %q read as %v", kv[fe+"/feature-persistent"], tr.persistent)
		}
		strict := func(key string, got uint64) {
			t.Helper()
			if mustUint(t, kv[key]) != got {
				t.Fatalf("%s = %q accepted as %d", key, kv[key], got)
			}
		}
		for q, qu := range tr.queues {
			d := fe
			if len(tr.queues) > 1 {
				d = fmt.Sprintf("%s/queue-%d", fe, q)
			}
			strict(d+"/event-channel", uint64(qu.port))
			order, paged := kv[fe+"/ring-page-order"]
			if !paged || order == "" {
				if len(qu.refs) != 1 {
					t.Fatalf("%d ring pages without ring-page-order", len(qu.refs))
				}
				strict(d+"/ring-ref", uint64(qu.refs[0]))
				continue
			}
			if n := len(qu.refs); n > 1<<maxOrder || uint64(bits.Len(uint(n))-1) != mustUint(t, order) || n&(n-1) != 0 {
				t.Fatalf("ring-page-order %q gave %d pages (max order %d)", order, n, maxOrder)
			}
			for i, r := range qu.refs {
				strict(fmt.Sprintf("%s/ring-ref%d", d, i), uint64(r))
			}
		}
	})
}

func mustUint(t *testing.T, s string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || s == "" || strings.Trim(s, "0123456789") != "" {
		t.Fatalf("accepted %q as a number", s)
	}
	return n
}
