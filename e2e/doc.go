// Package e2e is blkdom's end-to-end harness on real Xen: it boots Xen 4.17
// and a Debian Linux dom0 under qemu-system-x86_64 (software emulation, no
// KVM) and runs Linux PV guests whose xen-blkfront disks are served by the
// kernel's xen-blkback (the baseline that proves the harness), by "blkdom
// serve" in dom0, and by a storage driver domain booted from blkdom's
// initramfs with blkdom as PID 1. Besides verified I/O and file systems,
// the guests check what blkfront negotiated (flush, persistent grants,
// indirect descriptors, one queue per vCPU), discard, 4 KiB logical
// sectors and online resize; dom0 checks the eBPF probes and "blkdom stat".
// TestDriverDomainFaults fails, fills up, slows and removes the storage under
// a driver domain's disks and checks that no acknowledged write is lost.
// TestSpeed runs fio in a guest against the kernel's blkback and blkdom, in
// dom0 and in driver domains (kdd/ holds the kernel-blkback driver domain's
// init), in one boot, and records throughput, IOPS and CPU time; timings
// never fail it.
//
// The package holds only tests and the files they boot: fetch.sh downloads
// and unpacks the Debian packages into a cache, mkimages.sh builds the dom0,
// guest and kernel-driver-domain initramfs images, dom0/, guest/ and kdd/
// hold the scripts that run inside them. The tests talk to dom0 over its serial console: they send
// "@@RUN <id> <seconds> <step>" lines to an agent that runs the step (a
// function of dom0/steps.sh) and frames its output with markers. Guests
// report on their consoles, which dom0's xenconsoled logs to files the steps
// read; dom0 cues a waiting guest through its xenstore data/ directory.
//
// The tests skip unless BLKDOM_E2E=1; when it is set, anything missing is a
// failure. They need root (apt-get, device nodes) and 3 to 10 minutes
// (an idle machine, or one running another QEMU), plus about 17 for
// TestSpeed (its first run: 1,029 s, setup included):
//
//	BLKDOM_E2E=1 go test -v -timeout 30m ./e2e/
//
// BLKDOM_E2E_CACHE moves the download cache (default .cache/e2e in the
// repository); run logs, images and metrics go to its run/ directory.
// BLKDOM_E2E_GUEST_ARGS adds kernel arguments to the test guests, for
// diagnosis: "e2e.blkfront=max_indirect_segments=0" keeps Linux blkfront
// off indirect requests. BLKDOM_E2E_FIO_SECONDS and BLKDOM_E2E_FIO_RAMP set
// each of TestSpeed's fio jobs' measured and ramp-up seconds (default 15 and
// 2); BLKDOM_BENCH_DIR makes it write its table and chart there (bench.sh
// sets it; so may a ./test.sh run).
// BLKDOM_E2E_XSTRACE=1 has dom0's xenstored trace every request, for
// diagnosis (a failing step's dump shows the trace); it slows xenstore.
// BLKDOM_E2E_DD_CONFIG gives TestSpeed's blkdom driver domain its own
// settings ("engine=workers poll-us=0"), to compare designs there.
// BLKDOM_E2E_RESTART_KILLS sets how many times TestDom0Restart kills blkdom
// (default 3; 30 make a stress run of adoption).
// BLKDOM_E2E_CLOCK=hpet boots the machine without an invariant TSC (Xen's
// default timer; the domains' clock reads then may be system calls), as
// before 29 Nov 2026.
package e2e
