package kmodule

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// insert loads a module file with finit_module; one the kernel has
// already is no error. A compressed file needs CONFIG_MODULE_DECOMPRESS.
func insert(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if Compressed(file) {
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
