// Package initramfs builds the initramfs that boots blkdom as PID 1 of a
// storage driver domain: a gzip'd newc cpio archive with the blkdom binary
// as /init, the kernel modules a driver domain needs (with everything they
// depend on) and the empty directories init mounts file systems on.
//
// The archive is reproducible: the same inputs give the same bytes (zero
// times and owners, sorted entries, inode numbers in order, a gzip header
// without name or time). The package also owns the modules.dep format,
// which init reads back to load the modules in order. What init does with
// the image is package appliance's business.
package initramfs

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// DefaultModules is what a storage driver domain usually needs: the Xen
// devices blkdom uses (event channels, grant mapping and allocation,
// xenfs), disks handed to the domain (Xen PV, NVMe, SCSI/SATA, virtio),
// loop and device-mapper for images on files, the file systems images
// usually live on, and for images on network storage the Xen network
// device and the NFS client (v3 and v4; sunrpc, lockd and the rest come
// as their dependencies). A default module the kernel lacks is reported,
// not an error.
var DefaultModules = []string{
	"xen-evtchn", "xen-gntdev", "xen-gntalloc", "xenfs",
	"xen-blkfront", "nvme", "sd_mod", "ahci", "virtio_blk", "virtio_scsi",
	"loop", "dm-mod",
	"ext4", "xfs",
	"xen-netfront", "nfs", "nfsv3", "nfsv4", "sunrpc",
}

// Dirs are the directories init needs in the image: mount points of the
// file systems it mounts and of the disks it is told to mount.
var Dirs = []string{"dev", "proc", "sys", "run", "tmp", "mnt"}

// Spec says what goes into an image.
type Spec struct {
	// Init is the program the kernel runs as /init: the blkdom binary.
	Init string
	// ModulesDir is a kernel's lib/modules/<version> directory with
	// modules.dep (depmod has run); its base name is the version init
	// looks for with uname. Empty means an image without modules.
	ModulesDir string
	// Modules must all be found (or be built into the kernel).
	Modules []string
	// OptionalModules are packed when found and listed in
	// Summary.Missing when not; usually DefaultModules.
	OptionalModules []string
	// Files are extra files to copy into the image.
	Files []File
}

// File is one extra file: Src on the build machine, Dst in the image.
type File struct{ Src, Dst string }

// Summary says what Write packed.
type Summary struct {
	Version string   // kernel version of the modules, or ""
	Modules []string // module paths in load order
	Builtin []string // requested modules the kernel has built in
	Missing []string // optional modules the kernel does not have
}

// Write writes the gzip'd image that s describes to w.
func Write(w io.Writer, s Spec) (Summary, error) {
	var sum Summary
	img := image{}
	for _, d := range Dirs {
		img[d] = Record{Name: d, Mode: TypeDir | 0o755}
	}
	img["tmp"] = Record{Name: "tmp", Mode: TypeDir | 0o1777}
	// The kernel opens /dev/console for init before init can mount
	// devtmpfs; devtmpfs then hides this node.
	img["dev/console"] = Record{Name: "dev/console", Mode: TypeChar | 0o600, RdevMajor: 5, RdevMinor: 1}
	if err := checkStatic(s.Init); err != nil {
		return sum, err
	}
	if err := img.file(s.Init, "init"); err != nil {
		return sum, err
	}
	if s.ModulesDir != "" {
		var err error
		if sum, err = img.modules(s); err != nil {
			return sum, err
		}
	} else if len(s.Modules) > 0 {
		return sum, fmt.Errorf("modules requested without a modules directory")
	}
	for _, f := range s.Files {
		dst := strings.TrimPrefix(path.Clean("/"+f.Dst), "/")
		if _, taken := img[dst]; taken || dst == "" {
			return sum, fmt.Errorf("%s: the image already has %s", f.Src, f.Dst)
		}
		if err := img.file(f.Src, dst); err != nil {
			return sum, err
		}
	}
	return sum, img.write(w)
}

// checkStatic refuses an ELF program that needs a dynamic loader: the
// image has none, so the kernel could not start it ("Failed to execute
// /init (error -2)", then a panic). Build blkdom with CGO_ENABLED=0.
func checkStatic(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || string(magic[:]) != elf.ELFMAG {
		return nil // not ELF: a script, say, which is the caller's business
	}
	e, err := elf.NewFile(f)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	for _, p := range e.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked and the image has no loader for it; build it with CGO_ENABLED=0", name)
		}
	}
	return nil
}

// image is the archive being built, keyed by record name.
type image map[string]Record

// dir adds directory name and its parents.
func (img image) dir(name string) error {
	for ; name != "." && name != ""; name = path.Dir(name) {
		r, ok := img[name]
		if !ok {
			img[name] = Record{Name: name, Mode: TypeDir | 0o755}
		} else if r.Mode&typeMask != TypeDir {
			return fmt.Errorf("%s is in the image and not a directory", name)
		}
	}
	return nil
}

// file adds the file at src as name: mode 0755 if src is executable by
// anyone, else 0644, so the image does not depend on the umask of a checkout.
func (img image) file(src, name string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", src)
	}
	perm := uint32(0o644)
	if fi.Mode().Perm()&0o111 != 0 {
		perm = 0o755
	}
	if err := img.dir(path.Dir(name)); err != nil {
		return err
	}
	img[name] = Record{Name: name, Mode: TypeReg | perm, Data: data}
	return nil
}

// modules adds the modules s asks for, what they need, and a modules.dep
// listing them in load order.
func (img image) modules(s Spec) (Summary, error) {
	var sum Summary
	dir := filepath.Clean(s.ModulesDir)
	sum.Version = filepath.Base(dir)
	t, err := openTree(dir)
	if err != nil {
		return sum, err
	}
	var roots []string
	add := func(name string, optional bool) error {
		paths, builtin := t.resolve(name)
		switch {
		case builtin:
			sum.Builtin = append(sum.Builtin, name)
		case len(paths) == 0 && optional:
			sum.Missing = append(sum.Missing, name)
		case len(paths) == 0:
			return fmt.Errorf("module %s: not in %s", name, dir)
		}
		roots = append(roots, paths...)
		return nil
	}
	for _, m := range s.OptionalModules {
		if err := add(m, true); err != nil {
			return sum, err
		}
	}
	for _, m := range s.Modules {
		if err := add(m, false); err != nil {
			return sum, err
		}
	}
	if sum.Modules, err = t.loadOrder(roots); err != nil {
		return sum, err
	}
	base := "lib/modules/" + sum.Version
	for _, p := range sum.Modules {
		if err := img.file(filepath.Join(dir, filepath.FromSlash(p)), base+"/"+p); err != nil {
			return sum, err
		}
	}
	var dep bytes.Buffer
	if err := t.deps.FormatDeps(&dep, sum.Modules); err != nil {
		return sum, err
	}
	img[base+"/modules.dep"] = Record{Name: base + "/modules.dep", Mode: TypeReg | 0o644, Data: dep.Bytes()}
	return sum, nil
}

// write writes the records sorted by name, which puts every directory
// before what it holds, through gzip with an empty header.
func (img image) write(w io.Writer) error {
	names := make([]string, 0, len(img))
	for n := range img {
		names = append(names, n)
	}
	sort.Strings(names)
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	cw := NewWriter(zw)
	for _, n := range names {
		if err := cw.Write(img[n]); err != nil {
			return err
		}
	}
	if err := cw.Close(); err != nil {
		return err
	}
	return zw.Close()
}
