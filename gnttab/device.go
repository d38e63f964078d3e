package gnttab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// DevicePath is Linux's grant-mapping device.
const DevicePath = "/dev/xen/gntdev"

// gntdev ioctl numbers (include/uapi/xen/gntdev.h): _IOC(_IOC_NONE, 'G',
// nr, sizeof(argument)). layout_unsafe_test.go recomputes them from the structs.
const (
	ioctlMapGrantRef   = 0x00184700
	ioctlUnmapGrantRef = 0x00104701
	ioctlGrantCopy     = 0x00104708
)

// GNTCOPY_* flags: which side of a copy segment is a grant reference.
const (
	copySourceGref = 1
	copyDestGref   = 2
)

// grantRef is struct ioctl_gntdev_grant_ref.
type grantRef struct {
	domid uint32
	ref   uint32
}

// mapGrantRef is struct ioctl_gntdev_map_grant_ref with room for MaxBatch
// refs; the kernel reads count refs after the 16-byte header.
type mapGrantRef struct {
	count uint32
	_     uint32
	index uint64 // out: the mmap offset of the reserved range
	refs  [MaxBatch]grantRef
}

// unmapGrantRef is struct ioctl_gntdev_unmap_grant_ref.
type unmapGrantRef struct {
	index uint64
	count uint32
	_     uint32
}

// grantCopy is struct ioctl_gntdev_grant_copy.
type grantCopy struct {
	count    uint32
	_        uint32
	segments uintptr // *copySegment
}

// copyAddr is one side of a copy segment: a virtual address in this process
// or {u32 ref; u16 offset; u16 domid}, depending on the segment's flags.
type copyAddr [8]byte

// copySegment is struct gntdev_grant_copy_segment.
type copySegment struct {
	source copyAddr
	dest   copyAddr
	len    uint16
	flags  uint16
	status int16 // out: GNTST_*
	_      uint16
}

// copyChunk is how many segments one GRANT_COPY ioctl carries; longer
// batches are split.
const copyChunk = 128

func foreignAddr(dom uint32, ref Ref, offset uint16) (a copyAddr) {
	binary.NativeEndian.PutUint32(a[0:], uint32(ref))
	binary.NativeEndian.PutUint16(a[4:], offset)
	binary.NativeEndian.PutUint16(a[6:], uint16(dom))
	return a
}

// Device is an open /dev/xen/gntdev. Its ioctl arguments live inside it, so
// Map, Unmap and Copy allocate nothing; a mutex serialises their use, and
// the device is meant to serve one ring.
type Device struct {
	mu       sync.Mutex
	fd       int // -1 once closed
	mapArg   mapGrantRef
	unmapArg unmapGrantRef
	copyArg  grantCopy
	copySegs [copyChunk]copySegment
	copyFrom [copyChunk]int // copySegs[i] came from the caller's segs[copyFrom[i]]
}

// Open opens the grant-mapping device.
func Open() (*Device, error) {
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: DevicePath, Err: err}
	}
	return &Device{fd: fd}, nil
}

// Map maps refs, all granted by dom, into one contiguous range: the
// MAP_GRANT_REF ioctl reserves an mmap offset, then mmap maps the grants
// (this is where Xen checks them). If mmap fails, the reservation is
// released again, so nothing is left behind.
func (d *Device) Map(dom uint32, refs []Ref, writable bool) (Mapping, error) {
	n := len(refs)
	if n == 0 || n > MaxBatch {
		return Mapping{}, fmt.Errorf("gnttab: map %d grants (1..%d): %w", n, MaxBatch, unix.EINVAL)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return Mapping{}, fmt.Errorf("gnttab: map: %w", os.ErrClosed)
	}
	// A map interrupted by a signal is released and made again: gntdev's
	// mmap has failed with EINTR (once, in a PV dom0 on Linux 6.1; the
	// path was not found), and a backend that passed that on would fail
	// the guest's request for nothing.
	for tries := 1; ; tries++ {
		m, err := d.mapLocked(dom, refs, writable)
		if !errors.Is(err, unix.EINTR) || tries == mapTries {
			return m, err
		}
	}
}

// mapTries bounds Map's attempts when signals interrupt it.
const mapTries = 4

func (d *Device) mapLocked(dom uint32, refs []Ref, writable bool) (Mapping, error) {
	n := len(refs)
	d.mapArg.count = uint32(n)
	d.mapArg.index = 0
	for i, r := range refs {
		d.mapArg.refs[i] = grantRef{domid: dom, ref: uint32(r)}
	}
	if err := ioctl(d.fd, ioctlMapGrantRef, &d.mapArg); err != nil {
		return Mapping{}, fmt.Errorf("gnttab: map %d grants of domain %d: %w", n, dom, err)
	}
	index := d.mapArg.index
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	mem, err := mmap(d.fd, int64(index), n*PageSize, prot)
	if err != nil {
		if uerr := d.unmapIndex(index, n); uerr != nil {
			return Mapping{}, fmt.Errorf("gnttab: mmap %d grants of domain %d: %w (and releasing them: %v)", n, dom, err, uerr)
		}
		return Mapping{}, fmt.Errorf("gnttab: mmap %d grants of domain %d: %w", n, dom, err)
	}
	return Mapping{Mem: mem, Index: index}, nil
}

func (d *Device) unmapIndex(index uint64, n int) error {
	d.unmapArg = unmapGrantRef{index: index, count: uint32(n)}
	return ioctl(d.fd, ioctlUnmapGrantRef, &d.unmapArg)
}

// Unmap unmaps a mapping returned by Map: munmap, then release the
// grants. The memory must not be touched afterwards.
func (d *Device) Unmap(m Mapping) error {
	n := len(m.Mem) / PageSize
	if n == 0 || len(m.Mem)%PageSize != 0 {
		return fmt.Errorf("gnttab: unmap %d bytes: %w", len(m.Mem), unix.EINVAL)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return fmt.Errorf("gnttab: unmap: %w", os.ErrClosed)
	}
	if err := munmap(m.Mem); err != nil {
		return fmt.Errorf("gnttab: munmap: %w", err)
	}
	if err := d.unmapIndex(m.Index, n); err != nil {
		return fmt.Errorf("gnttab: unmap grants at index %#x: %w", m.Index, err)
	}
	return nil
}

// Copy copies between granted pages and local buffers without mapping
// them. It sets every segment's Status and returns a *CopyError if any
// failed; malformed segments (see CopySegment.Check) fail without reaching
// the kernel. If the ioctl itself fails, the segments it carried and all
// later ones get StatusGeneralError and that error is returned.
func (d *Device) Copy(segs []CopySegment) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return fmt.Errorf("gnttab: copy: %w", os.ErrClosed)
	}
	for next := 0; next < len(segs); {
		first := next
		k := 0
		for ; next < len(segs) && k < copyChunk; next++ {
			s := &segs[next]
			if s.Status = s.Check(); s.Status != StatusOK {
				continue
			}
			grant, local := foreignAddr(s.Dom, s.Ref, s.Offset), localAddr(s.Local)
			ks := &d.copySegs[k]
			if s.ToGrant {
				*ks = copySegment{source: local, dest: grant, flags: copyDestGref}
			} else {
				*ks = copySegment{source: grant, dest: local, flags: copySourceGref}
			}
			ks.len = uint16(len(s.Local))
			d.copyFrom[k] = next
			k++
		}
		if k == 0 {
			continue
		}
		err := d.copyBatch(k)
		runtime.KeepAlive(segs) // the kernel wrote through the Local pointers
		if err != nil {
			for i := first; i < len(segs); i++ {
				if i >= next || segs[i].Status == StatusOK {
					segs[i].Status = StatusGeneralError
				}
			}
			return fmt.Errorf("gnttab: copy %d segments: %w", k, err)
		}
		for i := 0; i < k; i++ {
			segs[d.copyFrom[i]].Status = Status(d.copySegs[i].status)
		}
	}
	return CopyResult(segs)
}

// Close closes the device. Mappings still in place stay valid until they
// are munmapped or the process exits; the kernel then releases the grants.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return fmt.Errorf("gnttab: close: %w", os.ErrClosed)
	}
	err := unix.Close(d.fd)
	d.fd = -1
	return err
}
