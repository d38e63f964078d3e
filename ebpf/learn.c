//go:build ignore

/* learn.c: a test helper, not part of blkdom's probes.
 *
 * The tests have no Xen grants, so they play a guest whose granted pages are
 * the test's own user pages, sent with MSG_ZEROCOPY. Userspace cannot see
 * the struct page of its memory, so this program records it: the fragment
 * pages of every packet that a socket bound to local port learn_port[0]
 * transmits. The test then declares those pages granted (MarkGranted) and
 * checks them against /proc/self/pagemap before trusting them.
 */

#include "kernel.h"

char __license[] SEC("license") = "Dual MIT/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} learn_port SEC(".maps");

/* the set of pages seen: page -> 1 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} learned SEC(".maps");

SEC("raw_tp/net_dev_start_xmit")
int BPF_PROG(learn_xmit, const struct sk_buff *skb)
{
	__u32 zero = 0, *port = bpf_map_lookup_elem(&learn_port, &zero);
	const struct sock *sk = BPF_CORE_READ(skb, sk);
	const void *frags;
	__u8 seen = 1;
	__u32 n;

	if (!port || !sk || BPF_CORE_READ(sk, __sk_common.skc_num) != *port)
		return 0;
	n = skb_frags(skb, &frags);
	for (__u32 i = 0; i < MAX_FRAGS; i++) {
		__u64 page;

		if (i >= n)
			break;
		page = frag_page(frags, i);
		if (page)
			bpf_map_update_elem(&learned, &page, &seen, BPF_NOEXIST);
	}
	return 0;
}
