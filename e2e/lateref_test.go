package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// lateRefKernels are the driver domain kernels of TestLateRef: Debian 12's
// and bookworm-backports' 6.12, each with its initramfs and a metric suffix.
var lateRefKernels = []struct {
	suffix, kernel, ramdisk string
	err                     func() error
}{
	{"k61", "/boot/vmlinuz", "/boot/dd.cpio.gz", func() error { return built.ddErr }},
	{"k612", "/boot/vmlinuz612", "/boot/dd612.cpio.gz", func() error { return built.dd612Err }},
}

// lateRefWriteSeconds is how long the guest writes with the faults
// injected: lateRefNetem on the driver domain's vif in dom0, so the NFS
// server's replies and acknowledgements arrive late or not at all, on a
// mount with lateRefMount. (A 0.1 s RPC timeout, timeo=1, with replies
// 150 ms late, stalled the O_DIRECT disk's writes for minutes on 6.1: the
// client resent 1 MiB writes faster than they could be answered.)
const (
	lateRefWriteSeconds = 25
	lateRefNetem        = "delay 20ms loss 2%"
	lateRefMount        = "vers=3,nolock,proto=tcp"
)

// probesClosing is blkdom's log line, when the probes close, with the late
// references at each hook and how often each program ran.
var probesClosing = regexp.MustCompile(`eBPF probes closing"?\s+(.*)`)

// TestLateRef is the late-reference demonstration of the seed's failure:
// a driver domain on NFS writes a guest's granted pages over the network,
// and packets dom0 sends it (the server's replies and acknowledgements) are
// late or lost (tc netem on dom0's side of its vif, while the guest
// writes), so its TCP keeps and resends buffers longer. The guest has
// two disks, image files on one NFSv3
// mount: xvda with O_DIRECT forced (direct-io-safe), whose writes go from
// the granted pages to the network, and xvdb with the default policy for
// network storage (buffered: the NFS client sends page-cache copies). The
// guest writes both for lateRefWriteSeconds with O_DIRECT. The eBPF probes
// count references to granted pages after their request completed, per
// disk; once per kernel, on Debian 12's 6.1 and on bookworm-backports'
// 6.12, in one driver domain each, one after the other. The buffered disk
// must count 0; the O_DIRECT disk's count is what the kernel did, with the
// probes' run counts (logged by blkdom when they close) as the evidence
// that they ran: the test fails if no hook ran at all. The references they
// saw to granted pages still in flight (lateref_inflight_refs_<kernel>)
// say whether the kernel's NFS client sent the guest's pages by reference
// at all, or copied them, which would make a late reference impossible.
func TestLateRef(t *testing.T) {
	s := start(t)
	s.step(60*time.Second, "nfs_server")
	defaultTotal := 0
	for i, k := range lateRefKernels {
		if err := k.err(); err != nil {
			t.Errorf("no driver domain image for %s: %v", k.suffix, err)
			continue
		}
		dd, guest := "lrdd"+k.suffix, "glr"+k.suffix
		direct, buffered := "/srv/nfs/lr-direct-"+k.suffix+".img", "/srv/nfs/lr-default-"+k.suffix+".img"
		s.step(60*time.Second, "mkimg %s 64", direct)
		s.step(60*time.Second, "mkimg %s 64", buffered)
		s.cleanup(90*time.Second, "xl destroy "+dd+" 2>/dev/null; true")
		s.step(180*time.Second, "E2E_KERNEL=%s dd_create_net %s %s 00:16:3e:5e:01:%02x - "+
			"ebpf=1 net/eth0/address=169.254.1.%d/16 "+
			"mounts/0/device=169.254.1.1:/srv/nfs mounts/0/mountpoint=/mnt/nfs mounts/0/fstype=nfs "+
			"mounts/0/options=%s", k.kernel, dd, k.ramdisk, i+1, 10+i, lateRefMount)
		s.step(250*time.Second, "dd_wait %s '%s' 240", dd, ddReady)
		s.step(120*time.Second, "dd_status %s mounts/0 mounted 100", dd)
		s.step(120*time.Second, "probes %s 100", dd)
		t.Logf("%s: %s", k.suffix, s.step(30*time.Second,
			"grep -m1 -o 'Linux version [^ ]*' /var/log/xen/guest-%s.log", dd))
		s.guestStartWith(guest, guestConfig{args: fmt.Sprintf("e2e.disks=xvda,xvdb e2e.writefor=%d", lateRefWriteSeconds)},
			"backend="+dd+",format=raw,vdev=xvda,access=rw,direct-io-safe,target=/mnt/nfs/"+direct[len("/srv/nfs/"):],
			"backend="+dd+",format=raw,vdev=xvdb,access=rw,target=/mnt/nfs/"+buffered[len("/srv/nfs/"):])
		// The guest's checks run on a clean network; its writes with
		// replies late and lost.
		s.step(250*time.Second, "guest_wait_io %s 240", guest)
		s.step(310*time.Second, "guest_ready %s writefor-ready 300", guest)
		s.step(60*time.Second, "netem %s %s", dd, lateRefNetem)
		s.step(30*time.Second, "guest_go %s e2e-writefor", guest)
		s.step(310*time.Second, "guest_wait_done %s 300", guest)
		wrote := s.step(30*time.Second, "grep -o '@@GUEST wrote [^@]*@@' /var/log/xen/guest-%s.log", guest)
		t.Logf("%s: %s", k.suffix, wrote)
		stat := s.step(90*time.Second, "stat_wait %s %s 2 60", dd, guest)
		t.Logf("%s: netem: %s", k.suffix, s.step(30*time.Second, "netem_show %s", dd))
		_, rows := statRows(stat)
		late := map[string]string{}
		for _, row := range rows {
			late[row["devid"]] = row["late_refs"]
		}
		odirect, err1 := strconv.Atoi(late["51712"])
		deflt, err2 := strconv.Atoi(late["51728"])
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: late_refs of xvda %q, xvdb %q: not counts (probes off?):\n%s",
				k.suffix, late["51712"], late["51728"], stat)
		}
		metric(t, "late_refs_odirect_nfs_"+k.suffix, strconv.Itoa(odirect))
		metric(t, "late_refs_default_nfs_"+k.suffix, strconv.Itoa(deflt))
		defaultTotal += deflt
		s.step(120*time.Second, "domain_destroy %s", guest)
		s.step(200*time.Second, "dd_shutdown %s 180", dd)
		closing := s.step(30*time.Second, "grep -m1 'eBPF probes closing' /var/log/xen/guest-%s.log", dd)
		m := probesClosing.FindStringSubmatch(closing)
		if m == nil {
			t.Fatalf("%s: no 'eBPF probes closing' line in the driver domain's log:\n%s", k.suffix, closing)
		}
		t.Logf("%s: %s", k.suffix, m[0])
		runs, inFlight := 0, 0
		for _, kv := range logAttr.FindAllStringSubmatch(m[1], -1) {
			n, err := strconv.Atoi(kv[2])
			if err != nil {
				continue
			}
			metric(t, "lateref_"+kv[1]+"_"+k.suffix, kv[2])
			switch {
			case strings.HasPrefix(kv[1], "runs_"):
				runs += n
			case strings.HasPrefix(kv[1], "inflight_"):
				inFlight += n
			}
		}
		if runs == 0 {
			t.Errorf("%s: the probes' programs never ran (run statistics all 0): %s", k.suffix, m[0])
		}
		// The evidence of what the kernel did with the O_DIRECT disk's
		// writes: sent the granted pages by reference (in-flight
		// references seen), or copied them (none at any hook).
		metric(t, "lateref_inflight_refs_"+k.suffix, strconv.Itoa(inFlight))
		how := "copies the guest's data: no socket buffer referenced a granted page in flight"
		if inFlight > 0 {
			how = fmt.Sprintf("sends granted pages by reference: %d references in flight, %d late", inFlight, odirect)
		}
		t.Logf("%s: the NFS client %s", k.suffix, how)
	}
	metric(t, "late_refs_default_nfs", strconv.Itoa(defaultTotal))
	if defaultTotal != 0 {
		t.Errorf("late_refs_default_nfs = %d, want 0: the default policy sent granted pages by reference", defaultTotal)
	}
}
