package appliance

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"blkdom/initramfs"
)

// moduleLoad is the outcome of loading one module.
type moduleLoad struct {
	name string
	err  error // nil: loaded now or before
}

// loadModules loads the modules that dir/modules.dep lists (the image's
// /lib/modules/<release>), each after the modules it needs, with
// finit_module. A module that is loaded already counts as loaded; one that
// fails (a Xen driver on bare metal says ENODEV) is reported and the rest
// are still tried. The error is for a missing or unreadable modules.dep.
func loadModules(dir string) ([]moduleLoad, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	deps, err := initramfs.ParseDeps(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	order, err := deps.LoadOrder(deps.Paths())
	if err != nil {
		return nil, err
	}
	out := make([]moduleLoad, 0, len(order))
	for _, p := range order {
		out = append(out, moduleLoad{initramfs.ModuleName(p), loadModule(filepath.Join(dir, filepath.FromSlash(p)))})
	}
	return out, nil
}

func loadModule(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if initramfs.Compressed(file) {
		flags |= unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("finit_module: %w", err)
	}
	return nil
}
