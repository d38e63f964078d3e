package initramfs

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"blkdom/kmodule"
)

// modTree writes a lib/modules/<version> directory in depmod's formats.
// Module files hold their own path, so the test can tell them apart.
func modTree(t *testing.T, version string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "lib", "modules", version)
	files := map[string]string{
		"modules.dep": strings.Join([]string{
			"kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko",
			"kernel/lib/crc16.ko:",
			"kernel/fs/mbcache.ko:",
			"kernel/fs/jbd2/jbd2.ko:",
			"kernel/crypto/crc32c_generic.ko:",
			"kernel/arch/x86/crypto/crc32c-intel.ko:",
			"kernel/drivers/md/dm-mod.ko:",
			"kernel/drivers/xen/xenfs/xenfs.ko: kernel/drivers/xen/xen-privcmd.ko",
			"kernel/drivers/xen/xen-privcmd.ko:",
			"kernel/drivers/block/zram.ko.zst:",
			"kernel/drivers/unused.ko:",
			"",
		}, "\n"),
		"modules.alias":   "# Aliases extracted from modules themselves.\nalias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\nalias pci:v00008086d*sv*sd*bc01sc06i01* ahci\nalias devname:mapper/control dm_mod\n",
		"modules.softdep": "# Soft dependencies extracted from modules themselves.\nsoftdep jbd2 pre: crypto-crc32c\nsoftdep ext4 pre: crypto-crc32c post: unused\n",
		"modules.builtin": "kernel/drivers/block/virtio_blk.ko\n",
	}
	for _, m := range strings.Fields(strings.ReplaceAll(files["modules.dep"], ":", "")) {
		files[m] = "module " + m
	}
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func fakeInit(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "blkdom")
	if err := os.WriteFile(p, []byte("#!/not/really/blkdom\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	return p
}

func build(t *testing.T, s Spec) ([]byte, Summary) {
	t.Helper()
	var buf bytes.Buffer
	sum, err := Write(&buf, s)
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), sum
}

func unpack(t *testing.T, gz []byte) map[string]Record {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	if zr.Name != "" || !zr.ModTime.IsZero() {
		t.Errorf("gzip header has name %q, time %v", zr.Name, zr.ModTime)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := readArchive(raw)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]Record{}
	for i, r := range recs {
		if i > 0 && recs[i-1].Name >= r.Name {
			t.Errorf("%s after %s: not sorted", r.Name, recs[i-1].Name)
		}
		m[r.Name] = r
	}
	return m
}

func TestWriteModules(t *testing.T) {
	dir := modTree(t, "6.1.0-test")
	gz, sum := build(t, Spec{
		Init:            fakeInit(t),
		ModulesDir:      dir,
		Modules:         []string{"zram", "virtio_blk"},
		OptionalModules: []string{"ext4", "dm-mod", "xenfs", "nvme"},
	})
	wantOrder := []string{
		"kernel/arch/x86/crypto/crc32c-intel.ko", "kernel/crypto/crc32c_generic.ko",
		"kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko", "kernel/lib/crc16.ko",
		"kernel/fs/ext4/ext4.ko", "kernel/drivers/md/dm-mod.ko",
		"kernel/drivers/xen/xen-privcmd.ko", "kernel/drivers/xen/xenfs/xenfs.ko",
		"kernel/drivers/block/zram.ko.zst",
	}
	want := Summary{Version: "6.1.0-test", Modules: wantOrder, Builtin: []string{"virtio_blk"}, Missing: []string{"nvme"}}
	if !reflect.DeepEqual(sum, want) {
		t.Errorf("summary\n%+v\nwant\n%+v", sum, want)
	}
	img := unpack(t, gz)
	if r := img["init"]; r.Mode != TypeReg|0o755 || string(r.Data) != "#!/not/really/blkdom\n" {
		t.Errorf("init: %+v", r)
	}
	if r := img["dev/console"]; r.Mode != TypeChar|0o600 || r.RdevMajor != 5 || r.RdevMinor != 1 {
		t.Errorf("dev/console: %+v", r)
	}
	for _, d := range append(Dirs, "lib/modules/6.1.0-test/kernel/fs/ext4") {
		if img[d].Mode&typeMask != TypeDir {
			t.Errorf("%s is not a directory in the image", d)
		}
	}
	for _, m := range wantOrder {
		r := img["lib/modules/6.1.0-test/"+m]
		if r.Mode != TypeReg|0o644 || string(r.Data) != "module "+m {
			t.Errorf("%s: %+v", m, r)
		}
	}
	if _, ok := img["lib/modules/6.1.0-test/kernel/drivers/unused.ko"]; ok {
		t.Error("image has a module nobody asked for")
	}
	dep := img["lib/modules/6.1.0-test/modules.dep"]
	deps, err := kmodule.ParseDeps(bytes.NewReader(dep.Data))
	if err != nil {
		t.Fatal(err)
	}
	// Init loads what modules.dep lists in file order; soft dependencies
	// are not in it, so the file order alone must put them first.
	order, err := deps.LoadOrder(deps.Paths())
	if err != nil || !reflect.DeepEqual(order, wantOrder) {
		t.Errorf("image's modules.dep gives load order %q (%v), want %q\n%s", order, err, wantOrder, dep.Data)
	}
}

func TestWriteErrors(t *testing.T) {
	dir := modTree(t, "v")
	init := fakeInit(t)
	brokenELF := filepath.Join(t.TempDir(), "broken")
	if err := os.WriteFile(brokenELF, []byte("\x7fELF truncated"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]Spec{
		"missing module":     {Init: init, ModulesDir: dir, Modules: []string{"nvme"}},
		"no modules.dep":     {Init: init, ModulesDir: t.TempDir()},
		"modules, no dir":    {Init: init, Modules: []string{"ext4"}},
		"no init":            {Init: filepath.Join(dir, "absent")},
		"broken ELF init":    {Init: brokenELF},
		"init is a dir":      {Init: dir},
		"file over init":     {Init: init, Files: []File{{Src: init, Dst: "/init"}}},
		"file under console": {Init: init, Files: []File{{Src: init, Dst: "dev/console/x"}}},
		"file is root":       {Init: init, Files: []File{{Src: init, Dst: "/"}}},
	} {
		if _, err := Write(io.Discard, s); err == nil {
			t.Errorf("%s: Write succeeded", name)
		}
	}
}

func TestDynamicInitRefused(t *testing.T) {
	// Debian's /bin/true needs ld.so, which an image does not have.
	_, err := Write(io.Discard, Spec{Init: "/bin/true"})
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("Write with a dynamic /init: %v", err)
	}
}

func TestWriteFiles(t *testing.T) {
	src := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(src, []byte("tool"), 0o750); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "conf")
	if err := os.WriteFile(conf, []byte("conf"), 0o600); err != nil {
		t.Fatal(err)
	}
	gz, _ := build(t, Spec{Init: fakeInit(t), Files: []File{{src, "/usr/bin/tool"}, {conf, "etc/conf"}}})
	img := unpack(t, gz)
	if r := img["usr/bin/tool"]; r.Mode != TypeReg|0o755 || string(r.Data) != "tool" {
		t.Errorf("usr/bin/tool: %+v", r)
	}
	if r := img["etc/conf"]; r.Mode != TypeReg|0o644 || string(r.Data) != "conf" {
		t.Errorf("etc/conf: %+v", r)
	}
	if img["usr"].Mode != TypeDir|0o755 || img["usr/bin"].Mode != TypeDir|0o755 {
		t.Error("parents of an extra file are missing")
	}
}

// TestReproducible builds the same image from two copies of the inputs
// made at different times with different permissions: the bytes must match.
func TestReproducible(t *testing.T) {
	spec := func(version string, initPerm os.FileMode) Spec {
		dir := modTree(t, version)
		init := fakeInit(t)
		if err := os.Chmod(init, initPerm); err != nil {
			t.Fatal(err)
		}
		return Spec{Init: init, ModulesDir: dir, OptionalModules: DefaultModules, Modules: []string{"ext4", "xenfs"}}
	}
	a, _ := build(t, spec("6.1.0-r", 0o700))
	time.Sleep(1100 * time.Millisecond) // other mtimes
	b, _ := build(t, spec("6.1.0-r", 0o755))
	if !bytes.Equal(a, b) {
		t.Fatalf("two builds differ: %d and %d bytes", len(a), len(b))
	}
	c, _ := build(t, spec("6.1.0-other", 0o755))
	if bytes.Equal(a, c) {
		t.Fatal("builds for different kernel versions are equal")
	}
}
