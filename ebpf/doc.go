// Package ebpf watches the kernel's network stack for late references to
// guests' pages.
//
// When blkdom serves a disk from network storage (NFS, iSCSI, DRBD) with
// O_DIRECT, a write's data pages go straight from the guest's grants into
// socket buffers. The kernel reports the write complete when the server has
// answered, yet TCP may still hold the pages for a retransmit and a driver
// may still hold clones in a queue. If blkdom has meanwhile answered the
// guest, the guest reuses the page and the wire carries its new contents:
// data the guest never wrote to that block reaches the storage server.
//
// Probes counts, per disk, every time a network buffer references a granted
// page after blkdom completed the request that used it, and reports each such
// reference as an Event. It owns the BPF programs and maps that do this
// (compiled from probes.c by gen.sh; the objects are committed so that
// blkdom builds without clang) and their lifecycle. It does not act on late
// references and neither does blkback: the counts are for people ("blkdom
// stat", the metrics). What keeps guests' pages away from the network
// stack is blkback's cache policy, which by default opens images on
// network storage without O_DIRECT, whatever the probes count.
//
// In a Xen domain, kprobes on the grant table's map and unmap functions learn
// which struct page holds which grant; blkback tells Probes when a request's
// grants are completed. Where those kprobes cannot attach (no Xen, no
// kprobes), MarkGranted declares pages granted by hand, which is how the
// tests drive the probes with ordinary user pages.
//
// gen.sh (go generate) rebuilds the committed objects with a pinned clang;
// scripts/vmtest.sh ebpf runs the tests in a Xen dom0 on Debian 12's 6.1 kernel under
// QEMU, where the grant-table kprobes see real grants.
package ebpf

//go:generate ./gen.sh
