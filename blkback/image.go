package blkback

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// image is an open disk image: a regular file or a block device. It is
// opened only once the frontend has connected and closed before the backend
// reports Closed, so that no page cache of it outlives a connection: a
// migration target must not serve data cached before the source let go
// (README, Cache policy).
type image struct {
	fd       int
	path     string
	blockDev bool
	readOnly bool
	// direct is true while the image is open with O_DIRECT.
	direct   atomic.Bool
	directMu sync.Mutex // serialises dropDirect
	store    storeInfo
	// flushFailed is set by the first failed flush (see flushed).
	flushFailed atomic.Bool
}

// storeInfo is what can be learned about an image without opening it: the
// backend publishes it before the frontend connects.
type storeInfo struct {
	blockDev bool
	// sectorSize and physSectorSize are the logical and physical block
	// sizes in bytes (512 for files).
	sectorSize, physSectorSize uint32
	// discard is true when the store can deallocate ranges: hole punching
	// for files, BLKDISCARD for devices that support it.
	discard            bool
	discardGranularity uint32
	discardSecure      bool
	// network names the network storage under the image ("nfs", "nbd",
	// ...), or is empty for local storage.
	network string
}

// probeStore learns about the storage under path by stat, statfs and
// sysfs: nothing here opens the image.
func probeStore(path string) (storeInfo, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return storeInfo{}, err
	}
	si := storeInfo{sectorSize: 512, physSectorSize: 512}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		var fs unix.Statfs_t
		if err := unix.Statfs(path, &fs); err != nil {
			return si, err
		}
		si.network = networkFS[int64(fs.Type)]
		// Files deallocate by punching holes of whole file system blocks.
		si.discard = true
		si.discardGranularity = uint32(fs.Bsize)
	case unix.S_IFBLK:
		si.blockDev = true
		q := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		queue := q + "/queue/"
		if _, err := os.Stat(queue); err != nil {
			queue = q + "/../queue/" // a partition: its disk's queue
		}
		si.sectorSize = uint32(sysfsUint(queue+"logical_block_size", 512))
		si.physSectorSize = max(uint32(sysfsUint(queue+"physical_block_size", 512)), si.sectorSize)
		si.discard = sysfsUint(queue+"discard_max_bytes", 0) > 0
		si.discardGranularity = uint32(sysfsUint(queue+"discard_granularity", uint64(si.sectorSize)))
		si.discardSecure = sysfsUint(queue+"max_secure_erase_sectors", 0) > 0
		si.network = networkBlockDevice(q)
	default:
		return si, errors.New("not a regular file or block device")
	}
	return si, nil
}

// networkFS names the file systems whose O_DIRECT writes can leave data
// pages referenced by the network stack after completion (a TCP
// retransmit, a clone in a driver queue): with O_DIRECT those pages are a
// guest's grants.
var networkFS = map[int64]string{
	0x6969: "nfs", 0xff534d42: "cifs", 0xfe534d42: "smb2", 0x517b: "smb",
	0x00c36400: "ceph", 0x65735546: "fuse", 0x01021997: "9p",
	0x5346414f: "afs", 0x7461636f: "ocfs2", 0x01161970: "gfs2",
}

// networkBlockDevice names a block device that is network storage: nbd,
// rbd, drbd, or a SCSI disk reached through an iSCSI session.
func networkBlockDevice(sysDev string) string {
	target, err := filepath.EvalSymlinks(sysDev)
	if err != nil {
		return ""
	}
	name := filepath.Base(target)
	for _, p := range []string{"nbd", "rbd", "drbd"} {
		if strings.HasPrefix(name, p) {
			return p
		}
	}
	if strings.Contains(target, "/session") {
		return "iscsi"
	}
	return ""
}

func sysfsUint(path string, def uint64) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return def
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return def
	}
	return v
}

// physicalDevice is the "physical-device" value for a block device image:
// major:minor in hex, as Linux's hotplug scripts write it. It stats the
// path without opening it.
func physicalDevice(path string) (string, bool) {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", false
	}
	return fmt.Sprintf("%x:%x", unix.Major(st.Rdev), unix.Minor(st.Rdev)), true
}

// openImage opens path for serving, with O_DIRECT when direct is set. A
// file system that refuses O_DIRECT gets the page cache instead; the
// caller learns which from im.direct.
func openImage(path string, readOnly, direct bool, si storeInfo) (*image, error) {
	flags := unix.O_CLOEXEC | unix.O_RDWR
	if readOnly {
		flags = unix.O_CLOEXEC | unix.O_RDONLY
	}
	im := &image{fd: -1, path: path, readOnly: readOnly, blockDev: si.blockDev, store: si}
	var err error
	if direct {
		im.fd, err = unix.Open(path, flags|unix.O_DIRECT, 0)
		im.direct.Store(err == nil)
	}
	if !im.direct.Load() {
		im.fd, err = unix.Open(path, flags, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return im, nil
}

// dropDirect turns O_DIRECT off on the open image, once, for memory the
// kernel cannot do direct I/O into.
func (im *image) dropDirect() error {
	im.directMu.Lock()
	defer im.directMu.Unlock()
	if !im.direct.Load() {
		return nil
	}
	flags, err := unix.FcntlInt(uintptr(im.fd), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	if _, err := unix.FcntlInt(uintptr(im.fd), unix.F_SETFL, flags&^unix.O_DIRECT); err != nil {
		return err
	}
	im.direct.Store(false)
	return nil
}

// sectors reads the image's current size in 512-byte sectors.
func (im *image) sectors() (uint64, error) {
	if im.blockDev {
		size, err := unix.IoctlGetUint64(im.fd, unix.BLKGETSIZE64)
		return size >> 9, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(im.fd, &st); err != nil {
		return 0, err
	}
	return uint64(st.Size) >> 9, nil
}

// advanceIovecs drops the first n bytes from iov, after a transfer that
// moved only those: it returns what is left, adjusting the first iovec.
func advanceIovecs(iov []unix.Iovec, n int) []unix.Iovec {
	for n > 0 && len(iov) > 0 {
		if uint64(n) < iov[0].Len {
			iov[0].Base = advance(iov[0].Base, n)
			iov[0].Len -= uint64(n)
			return iov
		}
		n -= int(iov[0].Len)
		iov = iov[1:]
	}
	return iov
}

// ends reports whether iov's bytes end right where p is.
func ends(iov unix.Iovec, p *byte) bool {
	return advance(iov.Base, int(iov.Len)) == p
}

// errFlushFailedBefore answers a flush after one that failed.
var errFlushFailedBefore = errors.New("an earlier flush of this image failed")

// flushed is the answer to a flush of the image that ended with err: once
// a flush has failed, every later flush fails too, until the image is
// opened again (the guest reconnects). A failed fdatasync does not keep
// what it failed to write: the page cache drops or cleans the pages whose
// writeback failed and reports the error once per open file, so the next
// fdatasync succeeds while writes acknowledged before the failure are not
// on the disk (PostgreSQL's "fsyncgate"); a device whose cache flush
// failed may have lost its cache. Answering OK then would tell the guest
// those writes are durable. Two flushes on different rings racing with
// the failure can still see it in either order.
func (im *image) flushed(err error) error {
	if err != nil {
		im.flushFailed.Store(true)
		return err
	}
	if im.flushFailed.Load() {
		return errFlushFailedBefore
	}
	return nil
}

// flush makes every completed write durable.
func (im *image) flush() error {
	if im.readOnly {
		return nil
	}
	return unix.Fdatasync(im.fd)
}

// discard deallocates length bytes at off: a hole punched in a file (its
// size kept), BLKDISCARD or BLKSECDISCARD on a block device.
func (im *image) discard(off, length uint64, secure bool) error {
	if length == 0 {
		return nil
	}
	if !im.blockDev {
		return unix.Fallocate(im.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(off), int64(length))
	}
	req := uint(unix.BLKDISCARD)
	if secure {
		req = unix.BLKSECDISCARD
	}
	return ioctlRange(im.fd, req, off, length)
}

func (im *image) close() error {
	err := unix.Close(im.fd)
	im.fd = -1
	return err
}
