//go:build ignore

/* probes.c: count network buffers that still reference a guest's granted
 * page after blkdom completed the request that used it.
 *
 * Two maps describe the grants:
 *   granted   page -> {domid, gref, mapped_ns, unmapped_ns}: which struct pages
 *             hold grants; filled by the grant-table kprobes below (or, in
 *             tests, from userspace);
 *   completed {domid, gref} -> {disk, completed_ns}: written by blkdom when
 *             it writes a request's response, and reset to 0 when a new
 *             request uses a grant that stayed mapped (a persistent grant);
 *             userspace knows grants by reference, never by page.
 * A reference is late when the page's grant has a completion at or after the
 * time the page was mapped. Then the disk's and the global counters for the
 * hook grow and an event goes to the ring buffer. A reference to a page that
 * is mapped and whose request has not completed is in flight: the network
 * stack sending a request's data from the guest's own page rather than from
 * a copy. Only the global in-flight counter for the hook grows (no event):
 * it is the evidence of whether a kernel sends granted pages by reference at
 * all, which a count of zero late references alone cannot tell.
 */

#include "kernel.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* Hooks: the index of a counter, and the hook field of an event. */
enum hook {
	HOOK_RETRANSMIT, /* tcp:tcp_retransmit_skb: TCP resends a segment */
	HOOK_XMIT,       /* net:net_dev_start_xmit: a driver is handed a packet */
	HOOK_DROP,       /* skb:kfree_skb: a buffer is dropped */
	HOOK_CONSUME,    /* skb:consume_skb: a buffer is freed after use */
	HOOKS,
};

struct grant {
	__u64 mapped_ns;
	__u64 unmapped_ns; /* 0 while mapped */
	__u32 gref;
	__u16 domid;
	__u16 pad;
};

struct gref_key {
	__u16 domid;
	__u16 pad;
	__u32 gref;
};

struct completion {
	__u64 completed_ns;
	__u32 disk;
	__u32 pad;
};

struct counts {
	__u64 hits[HOOKS];     /* late references */
	__u64 inflight[HOOKS]; /* references in flight (global_counts only) */
	__u64 lost;            /* events that found the ring buffer full */
};

struct event {
	__u64 page;
	__u64 since_ns; /* from completion to the reference */
	__u32 gref;
	__u32 disk;
	__u16 domid;
	__u8 hook;
	__u8 unmapped;
	__u32 pad;
};

/* Sizes are set by the loader (Options.Pages); these are placeholders. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct grant);
} granted SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1);
	__type(key, struct gref_key);
	__type(value, struct completion);
} completed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct counts);
} disk_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counts);
} global_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* Keep the event type in the object's BTF for bpf2go. */
const struct event *unused_event __attribute__((unused));

static __always_inline struct counts *disk_counter(__u32 disk)
{
	struct counts *c = bpf_map_lookup_elem(&disk_counts, &disk);

	if (!c) {
		struct counts zero = {};

		bpf_map_update_elem(&disk_counts, &disk, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&disk_counts, &disk);
	}
	return c;
}

static __always_inline void late(__u64 page, const struct grant *g,
				 const struct completion *c, enum hook hook, __u64 now)
{
	__u32 zero = 0;
	struct counts *global = bpf_map_lookup_elem(&global_counts, &zero);
	struct counts *disk = disk_counter(c->disk);
	struct event *e;

	if (global)
		__sync_fetch_and_add(&global->hits[hook], 1);
	if (disk)
		__sync_fetch_and_add(&disk->hits[hook], 1);

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		if (global)
			__sync_fetch_and_add(&global->lost, 1);
		if (disk)
			__sync_fetch_and_add(&disk->lost, 1);
		return;
	}
	e->page = page;
	e->since_ns = now - c->completed_ns;
	e->gref = g->gref;
	e->disk = c->disk;
	e->domid = g->domid;
	e->hook = hook;
	e->unmapped = g->unmapped_ns != 0;
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void in_flight(enum hook hook)
{
	__u32 zero = 0;
	struct counts *global = bpf_map_lookup_elem(&global_counts, &zero);

	if (global)
		__sync_fetch_and_add(&global->inflight[hook], 1);
}

static __always_inline void check_page(__u64 page, enum hook hook, __u64 now)
{
	struct grant *found = bpf_map_lookup_elem(&granted, &page);
	struct completion *done;
	struct gref_key key = {};
	struct grant g;

	if (!found)
		return;
	g = *found;
	key.domid = g.domid;
	key.gref = g.gref;
	done = bpf_map_lookup_elem(&completed, &key);
	/* A completion older than the mapping (or reset to 0) belongs to an
	 * earlier use of the reference: this page's request is in flight,
	 * unless the page was unmapped since and is no grant any more. */
	if (!done || done->completed_ns < g.mapped_ns) {
		if (!g.unmapped_ns)
			in_flight(hook);
		return;
	}
	late(page, &g, done, hook, now);
}

static __always_inline int check_skb(const struct sk_buff *skb, enum hook hook)
{
	const void *frags;
	__u32 n = skb_frags(skb, &frags);
	__u64 now;

	if (!n)
		return 0;
	now = bpf_ktime_get_ns();
	for (__u32 i = 0; i < MAX_FRAGS; i++) {
		__u64 page;

		if (i >= n)
			break;
		page = frag_page(frags, i);
		if (page)
			check_page(page, hook, now);
	}
	return 0;
}

SEC("raw_tp/tcp_retransmit_skb")
int BPF_PROG(on_retransmit, const struct sock *sk, const struct sk_buff *skb)
{
	return check_skb(skb, HOOK_RETRANSMIT);
}

SEC("raw_tp/net_dev_start_xmit")
int BPF_PROG(on_xmit, const struct sk_buff *skb)
{
	return check_skb(skb, HOOK_XMIT);
}

SEC("raw_tp/kfree_skb")
int BPF_PROG(on_drop, const struct sk_buff *skb)
{
	return check_skb(skb, HOOK_DROP);
}

SEC("raw_tp/consume_skb")
int BPF_PROG(on_consume, const struct sk_buff *skb)
{
	return check_skb(skb, HOOK_CONSUME);
}

/* Learning which pages hold grants, in a real Xen domain.
 *
 * gntdev maps a batch of grants with gnttab_map_refs(map_ops, kmap_ops,
 * pages, count) and unmaps them, once no one holds the pages any more, with
 * gnttab_unmap_refs(unmap_ops, kunmap_ops, pages, count). struct
 * gnttab_map_grant_ref is Xen's hypercall ABI (xen/include/public/
 * grant_table.h), fixed in layout, so it needs no relocation; likewise
 * x86-64's struct pt_regs, the ptrace ABI that BPF_KPROBE reads arguments from.
 */

struct gnttab_map_grant_ref {
	__u64 host_addr;
	__u32 flags;
	__u32 ref;
	__u16 dom;
	__s16 status;
	__u32 handle;
	__u64 dev_bus_addr;
};

struct pt_regs {
	unsigned long r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8;
	unsigned long rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs, eflags, rsp, ss;
};

/* gntdev maps at most its "limit" parameter's pages at once (65536). */
#define MAX_BATCH 65536

struct batch {
	const struct gnttab_map_grant_ref *ops;
	struct page *const *pages;
	__u64 now;
};

static long map_one(__u32 i, struct batch *b)
{
	struct gnttab_map_grant_ref op;
	struct grant g = {};
	__u64 page;

	if (bpf_probe_read_kernel(&op, sizeof(op), &b->ops[i]) ||
	    bpf_probe_read_kernel(&page, sizeof(page), &b->pages[i]))
		return 1;
	g.mapped_ns = b->now;
	g.gref = op.ref;
	g.domid = op.dom;
	bpf_map_update_elem(&granted, &page, &g, BPF_ANY);
	return 0;
}

static long unmap_one(__u32 i, struct batch *b)
{
	struct grant *g;
	__u64 page;

	if (bpf_probe_read_kernel(&page, sizeof(page), &b->pages[i]))
		return 1;
	g = bpf_map_lookup_elem(&granted, &page);
	if (g)
		g->unmapped_ns = b->now;
	return 0;
}

SEC("kprobe/gnttab_map_refs")
int BPF_KPROBE(on_map_refs, const struct gnttab_map_grant_ref *ops,
	       const void *kops, struct page *const *pages, unsigned int count)
{
	struct batch b = {.ops = ops, .pages = pages, .now = bpf_ktime_get_ns()};

	bpf_loop(count < MAX_BATCH ? count : MAX_BATCH, map_one, &b, 0);
	return 0;
}

SEC("kprobe/gnttab_unmap_refs")
int BPF_KPROBE(on_unmap_refs, const void *ops, const void *kops,
	       struct page *const *pages, unsigned int count)
{
	struct batch b = {.pages = pages, .now = bpf_ktime_get_ns()};

	bpf_loop(count < MAX_BATCH ? count : MAX_BATCH, unmap_one, &b, 0);
	return 0;
}
