/* kernel.h: the little of the kernel that blkdom's probes read.
 *
 * Instead of a whole vmlinux.h, each kernel struct below declares only the
 * fields the probes read, marked preserve_access_index, so that the loader
 * relocates every access against the running kernel's BTF (CO-RE). One
 * object thus runs on Debian's 6.1 kernel and on newer ones, where the
 * layout of skb fragments changed.
 *
 * Shared by probes.c (the production probes) and learn.c (a test helper).
 */

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

/* UAPI constants from <linux/bpf.h> (a stable ABI). */
enum {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};
enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
};

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

struct page;

struct sock_common {
	__u16 skc_num; /* local port, host byte order */
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct sk_buff {
	struct sock *sk;
	unsigned char *head;
	unsigned int end; /* offset of the shared info from head (64-bit kernels) */
} __attribute__((preserve_access_index));

/* skb_frag_t, Linux >= 6.10 or so: a netmem reference, which is a struct page
 * pointer unless its low bit marks a net_iov (device memory, never a page). */
struct skb_frag {
	unsigned long netmem;
	unsigned int len;
	unsigned int offset;
} __attribute__((preserve_access_index));

/* skb_frag_t between the bio_vec era and netmem: a struct of its own with
 * bio_vec's field names. The ___ suffix is a CO-RE flavor: it relocates
 * against the kernel's struct skb_frag. */
struct skb_frag___page {
	struct page *bv_page;
	unsigned int bv_len;
	unsigned int bv_offset;
} __attribute__((preserve_access_index));

/* skb_frag_t up to Linux 6.6 or so, including Debian 12's 6.1: a bio_vec. */
struct bio_vec {
	struct page *bv_page;
	unsigned int bv_len;
	unsigned int bv_offset;
} __attribute__((preserve_access_index));

struct skb_shared_info {
	__u8 nr_frags;
	struct skb_frag frags[1];
} __attribute__((preserve_access_index));

#define NET_IOV 1UL

/* The kernel's MAX_SKB_FRAGS is a build option (CONFIG_MAX_SKB_FRAGS, 17 to
 * 45; Debian and most builds use 17). Loops run to the largest value it can
 * take and stop at the skb's nr_frags. */
#define MAX_FRAGS 45

/* skb_frags finds the fragment array of skb's shared info (which lies at
 * skb->head + skb->end) and returns how many fragments it holds. */
static __always_inline __u32 skb_frags(const struct sk_buff *skb, const void **frags)
{
	const unsigned char *head = BPF_CORE_READ(skb, head);
	unsigned int end = BPF_CORE_READ(skb, end);
	const struct skb_shared_info *shinfo = (const void *)(head + end);

	if (!head)
		return 0;
	*frags = (const void *)shinfo + bpf_core_field_offset(struct skb_shared_info, frags);
	return BPF_CORE_READ(shinfo, nr_frags);
}

/* frag_page returns the address of the struct page that fragment i of the
 * array at frags refers to, or 0 when the fragment is not a page. */
static __always_inline __u64 frag_page(const void *frags, __u32 i)
{
	if (bpf_core_field_exists(struct skb_frag, netmem)) {
		const struct skb_frag *f = frags + i * bpf_core_type_size(struct skb_frag);
		unsigned long netmem = BPF_CORE_READ(f, netmem);

		return (netmem & NET_IOV) ? 0 : netmem;
	}
	if (bpf_core_field_exists(struct skb_frag___page, bv_page)) {
		const struct skb_frag___page *f = frags + i * bpf_core_type_size(struct skb_frag___page);

		return (__u64)BPF_CORE_READ(f, bv_page);
	}
	const struct bio_vec *f = frags + i * bpf_core_type_size(struct bio_vec);

	return (__u64)BPF_CORE_READ(f, bv_page);
}
