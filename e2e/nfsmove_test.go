package e2e

import (
	"regexp"
	"strconv"
	"testing"
	"time"
)

// moveOrder is move_guest's account of one move: the source's
// "disconnected" lines (after blkdom flushed and closed the image) for the
// old domain were all there before xl restore started (closed-first=1),
// and the console clocks of both lines.
var moveOrder = regexp.MustCompile(`move-order (\S+) (\S+) old=(\d+) new=(\d+) closed-first=([01]) disconnected-at=(\S*) connected-at=(\S*)`)

// moveResult is the guest's final count.
var moveResult = regexp.MustCompile(`@@GUEST move verified=(\d+) stale=(\d+) writes=(\d+)@@`)

// moveChunks is how many 128 KiB chunks the guest's writer goes round
// (n in guest/init's movewrite); it writes that many before each move and
// after the last, every chunk once, so each driver domain's page cache
// holds data the other then overwrites.
const moveChunks = 32

// TestNFSMove moves a guest between two storage driver domains. Dom0 runs
// the NFS server; two driver domains booted from blkdom's initramfs both
// mount its export (NFSv3) and the guest's disk is an image file on it,
// with the default policy for network storage (buffered; opened after the
// frontend's handshake, flushed and closed before Closed). The guest
// writes a known pattern round and round and reads back what it wrote.
// Dom0 moves it to a config that names the second driver domain as the
// disk's backend (xl save, then xl restore with that config: Debian's Xen
// cannot live-migrate a PV guest), lets it write every chunk again, and
// moves it back the same way. The guest then reads back every chunk:
// nfs_stale_reads counts the read-backs, across both moves, that were not
// what it last wrote there (0), nfs_guest_verified_bytes the bytes that
// were. nfs_close_before_open is 1 when, for both moves, dom0 saw the
// source's blkdom log "disconnected" for the guest's disk before it
// started the restore (and so before the target's blkdom could open it).
func TestNFSMove(t *testing.T) {
	s := start(t)
	if built.ddErr != nil {
		t.Fatalf("no driver domain image: %v", built.ddErr)
	}
	s.step(60*time.Second, "nfs_server")
	s.step(60*time.Second, "mkimg /srv/nfs/move.img 64")
	dds := []string{"mvdd1", "mvdd2"}
	for i, dd := range dds {
		s.cleanup(90*time.Second, "xl destroy "+dd+" 2>/dev/null; true")
		s.step(180*time.Second, "dd_create_net %s /boot/dd.cpio.gz 00:16:3e:5e:02:%02x - "+
			"net/eth0/address=169.254.1.%d/16 "+
			"mounts/0/device=169.254.1.1:/srv/nfs mounts/0/mountpoint=/mnt/nfs mounts/0/fstype=nfs "+
			"mounts/0/options=vers=3,nolock,proto=tcp", dd, i+1, 20+i)
	}
	for _, dd := range dds {
		s.step(250*time.Second, "dd_wait %s '%s' 240", dd, ddReady)
		s.step(120*time.Second, "dd_status %s mounts/0 mounted 100", dd)
	}
	s.guestStartWith("gmove", guestConfig{memory: 128, args: "e2e.move=xvda"},
		"backend=mvdd1,format=raw,vdev=xvda,access=rw,target=/mnt/nfs/move.img")
	s.step(250*time.Second, "guest_ready gmove move-ready 240")
	s.step(250*time.Second, "move_writes gmove %d 240", moveChunks)
	moves, ordered := 0, 0
	for i, m := range [][2]string{{dds[0], dds[1]}, {dds[1], dds[0]}} {
		out := s.step(180*time.Second, "move_guest gmove %s %s", m[0], m[1])
		o := moveOrder.FindStringSubmatch(out)
		if o == nil {
			t.Fatalf("move %d: no move-order line:\n%s", i+1, out)
		}
		moves++
		t.Logf("move %d: %s (domain %s) -> %s (domain %s): %s disconnected at %s, %s connected at %s",
			i+1, o[1], o[3], o[2], o[4], o[1], o[6], o[2], o[7])
		if o[5] == "1" && o[6] <= o[7] {
			ordered++
		} else {
			t.Errorf("move %d: the source did not close before the target opened:\n%s", i+1, out)
		}
		s.step(250*time.Second, "move_writes gmove %d 240", (i+2)*moveChunks)
	}
	metric(t, "nfs_migrations", strconv.Itoa(moves))
	closeFirst := 0
	if ordered == 2 {
		closeFirst = 1
	}
	metric(t, "nfs_close_before_open", strconv.Itoa(closeFirst))
	s.step(30*time.Second, "guest_go gmove e2e-move-stop")
	r := moveResult.FindStringSubmatch(s.step(310*time.Second, "guest_wait_done gmove 300"))
	if r == nil {
		t.Fatal("the guest reported no move result")
	}
	t.Logf("guest: %s writes, %s bytes read back as written, %s stale", r[3], r[1], r[2])
	metric(t, "nfs_guest_verified_bytes", r[1])
	metric(t, "nfs_stale_reads", r[2])
	if v, _ := strconv.Atoi(r[1]); v == 0 {
		t.Error("the guest verified nothing")
	}
	if r[2] != "0" {
		t.Errorf("%s stale reads across the moves", r[2])
	}
	s.step(120*time.Second, "domain_destroy gmove")
	for _, dd := range dds {
		s.step(200*time.Second, "dd_shutdown %s 180", dd)
	}
	// With both driver domains gone, dom0 reads the image in its export:
	// each chunk must hold the generation the guest last wrote there
	// (write j is chunk j mod moveChunks, generation j / moveChunks).
	writes, _ := strconv.Atoi(r[3])
	gens := map[int][]int{}
	for c := 0; c < min(writes, moveChunks); c++ {
		g := (writes - 1 - c) / moveChunks
		gens[g] = append(gens[g], c)
	}
	differ, compared := 0, 0
	for g, cs := range gens {
		d, n := lost(s.step(120*time.Second, "fault_verify /srv/nfs/move.img xvda.%d %s", g, joinInts(cs)))
		differ += d
		compared += n
	}
	t.Logf("dom0: %d chunks of the image compared with the last generation written, %d differ", compared, differ)
	if differ > 0 || compared != min(writes, moveChunks) {
		t.Errorf("dom0 compared %d chunks with what the guest last wrote, %d differ; want %d, 0",
			compared, differ, min(writes, moveChunks))
	}
}
