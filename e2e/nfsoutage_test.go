package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// outageLine is a writer's verdict in the NFS outage scenario (guest/init,
// e2e.outage=1).
var outageLine = regexp.MustCompile(`@@GUEST outage (xvd[a-z]+) acked=(\d+) lost=(\d+) stall=([0-9.]+)@@`)

// ddOutageLine is a line of the driver domain's console that nfs_outage
// prints: its NFS client on the server going and coming back, blkdom's
// warnings and errors.
var ddOutageLine = regexp.MustCompile(`.*(nfs: |blkdom: level=(WARN|ERROR)).*`)

// outageResult is one disk's verdict: chunks 0..acked-1 written and
// flushed, lost of them read back wrong by the guest, and the longest time
// between two of its completed writes or flushes.
type outageResult struct {
	acked, lost int
	stall       float64
}

// outageResults reads the guest's verdict lines, by disk.
func outageResults(out string) map[string]outageResult {
	rs := map[string]outageResult{}
	for _, m := range outageLine.FindAllStringSubmatch(out, -1) {
		var r outageResult
		r.acked, _ = strconv.Atoi(m[2])
		r.lost, _ = strconv.Atoi(m[3])
		r.stall, _ = strconv.ParseFloat(m[4], 64)
		rs[m[1]] = r
	}
	return rs
}

// outageDown is how long dom0's NFS server stays stopped.
const outageDown = 30

// TestNFSOutage is the NFS server going away under a guest's I/O and
// coming back. A driver domain booted from blkdom's initramfs mounts dom0's
// export (NFSv3, hard: the kernel's default, no soft option) and serves a
// guest two image files on it: xvda with the default policy on NFS
// (buffered), xvdb marked direct-io-safe (O_DIRECT). The guest writes known
// chunks to both with O_DIRECT, flushing after every fourth; meanwhile dom0
// stops its nfsd for 30 s and starts it again. The guest's I/O must stall
// and resume with no error (its longest gap between two completions is
// nfs_outage_stall_seconds), both disks must stay Connected with no failed
// request in "blkdom stat", the driver domain must stop in order (blkdom
// did not crash), and every chunk the guest wrote and flushed must read
// back in the guest and be in the export, byte for byte, after the driver
// domain closed the images (nfs_outage_lost_writes, 0).
func TestNFSOutage(t *testing.T) {
	s := start(t)
	if built.ddErr != nil {
		t.Fatalf("no driver domain image: %v", built.ddErr)
	}
	s.step(60*time.Second, "nfs_server")
	s.cleanup(60*time.Second, "nfs_start 2>/dev/null; true")
	imgs := map[string]string{"xvda": "/srv/nfs/outage.img", "xvdb": "/srv/nfs/outage-direct.img"}
	for _, img := range imgs {
		s.step(60*time.Second, "mkimg %s 256", img)
	}
	s.cleanup(90*time.Second, "xl destroy outdd 2>/dev/null; true")
	s.step(180*time.Second, "dd_create_net outdd /boot/dd.cpio.gz 00:16:3e:5e:00:06 - "+
		"net/eth0/address=169.254.1.6/16 "+
		"mounts/0/device=169.254.1.1:/srv/nfs mounts/0/mountpoint=/mnt/nfs mounts/0/fstype=nfs "+
		"mounts/0/options=vers=3,nolock,proto=tcp")
	s.step(250*time.Second, "dd_wait outdd '%s' 240", ddReady)
	s.step(120*time.Second, "dd_status outdd mounts/0 mounted 100")
	s.guestStartWith("goutage", guestConfig{args: "e2e.outage=1"},
		"backend=outdd,format=raw,vdev=xvda,access=rw,target=/mnt/nfs/outage.img",
		"backend=outdd,format=raw,vdev=xvdb,access=rw,direct-io-safe,target=/mnt/nfs/outage-direct.img")
	out := s.step(480*time.Second, "nfs_outage goutage %d outdd", outageDown)
	rs := outageResults(out)
	for _, l := range ddOutageLine.FindAllString(out, -1) {
		t.Logf("driver domain: %s", l)
	}

	// After the outage both disks are still Connected, and blkdom failed
	// no request.
	for d := range imgs {
		s.check(30*time.Second, "vbd_state goutage %s 4 0", d)
	}
	checkStats(t, "goutage", s.step(90*time.Second, "stat_wait outdd goutage 2 60"), 2, false)
	s.step(120*time.Second, "domain_destroy goutage")
	s.check(200*time.Second, "dd_shutdown outdd 180")

	guestLost, exportLost, stall := 0, 0, 0.0
	for d, img := range imgs {
		r, ok := rs[d]
		if !ok {
			t.Errorf("no verdict from the guest's writer on %s:\n%s", d, out)
			continue
		}
		v := s.step(300*time.Second, "fault_verify %s %s $(seq 0 %d)", img, d, r.acked-1)
		differ, compared := lost(v)
		if compared != r.acked {
			t.Errorf("%s: compared %d chunks in the export, want %d", d, compared, r.acked)
		}
		t.Logf("%s: %d chunks written and flushed; the guest read %d back wrong, the export has %d wrong; longest stall %.2f s",
			d, r.acked, r.lost, differ, r.stall)
		guestLost += r.lost
		exportLost += differ
		stall = max(stall, r.stall)
		if r.stall < outageDown/2 {
			t.Errorf("%s: the guest's longest stall is %.2f s: its I/O did not wait for the %d s outage", d, r.stall, outageDown)
		}
	}
	lostWrites := max(guestLost, exportLost)
	metric(t, "nfs_outage_lost_writes", strconv.Itoa(lostWrites))
	metric(t, "nfs_outage_stall_seconds", fmt.Sprintf("%.2f", stall))
	if lostWrites > 0 {
		t.Errorf("acknowledged writes lost: %d read back wrong in the guest, %d wrong in the export", guestLost, exportLost)
	}
}

// TestOutageResults reads verdict lines as the guest prints them, with the
// console's time stamps.
func TestOutageResults(t *testing.T) {
	out := `[2026-11-29 01:20:00] @@GUEST outage xvdb acked=212 lost=0 stall=41.37@@
[2026-11-29 01:20:03] @@GUEST outage xvda acked=96 lost=2 stall=0.80@@
[2026-11-29 01:20:03] @@GUEST done rc=0@@`
	rs := outageResults(out)
	want := map[string]outageResult{"xvda": {96, 2, 0.8}, "xvdb": {212, 0, 41.37}}
	if len(rs) != len(want) {
		t.Fatalf("%d verdicts, want %d: %v", len(rs), len(want), rs)
	}
	for d, w := range want {
		if rs[d] != w {
			t.Errorf("%s: %+v, want %+v", d, rs[d], w)
		}
	}
}
