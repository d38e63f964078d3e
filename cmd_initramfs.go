package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"blkdom/initramfs"
)

// listFlag is a flag that may be given many times.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// initramfsCmd is "blkdom initramfs": write the driver domain's initramfs.
func initramfsCmd(fs *flag.FlagSet) func() error {
	modules := fs.String("modules", "", "a kernel's lib/modules/<version> `directory` (depmod has run; required)")
	output := fs.String("output", "", "write the gzip'd cpio archive to `file` (required)")
	binary := fs.String("binary", "", "the blkdom `binary` to install as /init (default: this one)")
	var extra, files listFlag
	fs.Var(&extra, "module", "also pack module `name` and what it needs (repeatable; always packed when present: "+
		strings.Join(initramfs.DefaultModules, " ")+")")
	fs.Var(&files, "file", "also pack the file `src:dst` (repeatable)")
	return func() error {
		if *output == "" || *modules == "" {
			return usageErrorf("-modules and -output are required")
		}
		return writeInitramfs(*output, *modules, *binary, extra, files)
	}
}

// writeInitramfs writes the initramfs to output, from the kernel modules
// in modules, with binary (or this executable) as /init.
func writeInitramfs(output, modules, binary string, extra, files []string) error {
	spec := initramfs.Spec{Init: binary, ModulesDir: modules, Modules: extra,
		OptionalModules: initramfs.DefaultModules}
	if spec.Init == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		spec.Init = exe
	}
	for _, f := range files {
		src, dst, ok := strings.Cut(f, ":")
		if !ok || src == "" || dst == "" {
			return usageErrorf("-file %q: want SRC:DST", f)
		}
		spec.Files = append(spec.Files, initramfs.File{Src: src, Dst: dst})
	}
	// Write next to the output and rename, so a failed build leaves no
	// half-written image behind.
	tmp, err := os.CreateTemp(filepath.Dir(output), ".initramfs-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	sum, err := initramfs.Write(tmp, spec)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), output); err != nil {
		return err
	}
	for _, m := range sum.Missing {
		fmt.Fprintf(os.Stderr, "blkdom initramfs: warning: default module %s is not in %s\n", m, modules)
	}
	fmt.Fprintf(os.Stderr, "blkdom initramfs: %s: /init and %d modules for %s\n", output, len(sum.Modules), sum.Version)
	return nil
}
