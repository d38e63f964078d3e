package blkback

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"

	"blkdom/blkif"
)

// image is an open disk image: a regular file or a block device. It is
// opened only once the frontend has connected and closed before the backend
// reports Closed, so that no page cache of it outlives a connection (see
// the seed thread: a migration target must not serve stale cached data).
type image struct {
	fd   int
	path string
	// sectors is the size in 512-byte units, whatever the sector size.
	sectors uint64
	// sectorSize and physSectorSize are the logical and physical block sizes.
	sectorSize, physSectorSize uint32
	readOnly                   bool
	// direct is true when the image was opened with O_DIRECT, so I/O goes
	// straight between the device and the mapped guest pages.
	direct bool
}

// openImage opens path for serving. With direct set it asks for O_DIRECT
// and falls back to the page cache when the file system refuses it.
func openImage(path string, readOnly, direct bool) (*image, error) {
	flags := unix.O_CLOEXEC | unix.O_RDWR
	if readOnly {
		flags = unix.O_CLOEXEC | unix.O_RDONLY
	}
	im := &image{fd: -1, path: path, readOnly: readOnly, sectorSize: 512, physSectorSize: 512}
	var err error
	if direct {
		im.fd, err = unix.Open(path, flags|unix.O_DIRECT, 0)
		im.direct = err == nil
	}
	if !im.direct {
		im.fd, err = unix.Open(path, flags, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := im.probe(); err != nil {
		unix.Close(im.fd)
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return im, nil
}

// probe reads the size and block sizes of the open image.
func (im *image) probe() error {
	var st unix.Stat_t
	if err := unix.Fstat(im.fd, &st); err != nil {
		return err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		im.sectors = uint64(st.Size) >> blkif.SectorShift
		return nil
	case unix.S_IFBLK:
		size, err := unix.IoctlGetUint64(im.fd, unix.BLKGETSIZE64)
		if err != nil {
			return fmt.Errorf("BLKGETSIZE64: %w", err)
		}
		lbs, err := unix.IoctlGetInt(im.fd, unix.BLKSSZGET)
		if err != nil {
			return fmt.Errorf("BLKSSZGET: %w", err)
		}
		pbs, err := unix.IoctlGetInt(im.fd, unix.BLKPBSZGET)
		if err != nil {
			return fmt.Errorf("BLKPBSZGET: %w", err)
		}
		im.sectors = size >> blkif.SectorShift
		im.sectorSize, im.physSectorSize = uint32(lbs), uint32(max(pbs, lbs))
		return nil
	}
	return errors.New("not a regular file or block device")
}

// transfer moves data between the image at byte offset off and the
// memory the iovecs describe, completing short transfers. The iovecs are
// consumed.
func (im *image) transfer(write bool, iov []unix.Iovec, off int64) error {
	for len(iov) > 0 {
		var n int
		var err error
		if write {
			n, err = pwritev(im.fd, iov, off)
		} else {
			n, err = preadv(im.fd, iov, off)
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		off += int64(n)
		for n > 0 {
			if uint64(n) < iov[0].Len {
				iov[0].Base = advance(iov[0].Base, n)
				iov[0].Len -= uint64(n)
				break
			}
			n -= int(iov[0].Len)
			iov = iov[1:]
		}
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

func (im *image) close() error {
	err := unix.Close(im.fd)
	im.fd = -1
	return err
}
