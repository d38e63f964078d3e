// Package kmodule reads a kernel's module tree (modules.dep) and loads
// modules into the running kernel, each after the modules it needs. Both
// sides of a driver domain use it: the initramfs builder to pick the
// modules and write their modules.dep, and PID 1 to load them.
package kmodule

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strings"
)

// ModuleName returns the kernel's name for a module file or a name a user
// typed: the base name without ".ko" and compression suffix, with dashes
// turned into underscores ("kernel/drivers/md/dm-mod.ko" and "dm-mod" are
// both "dm_mod"), as the kernel and kmod compare names.
func ModuleName(p string) string {
	b := path.Base(p)
	b = b[:len(b)-len(moduleSuffix(b))]
	return strings.ReplaceAll(b, "-", "_")
}

// moduleSuffix returns the module file suffix that name ends with, or "".
func moduleSuffix(name string) string {
	for _, s := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if strings.HasSuffix(name, s) {
			return s
		}
	}
	return ""
}

// Compressed reports whether a module file is compressed (.ko.xz, .ko.zst,
// .ko.gz). The image keeps such a module as it is: the kernel decompresses
// it when finit_module gets MODULE_INIT_COMPRESSED_FILE, which needs
// CONFIG_MODULE_DECOMPRESS (Linux 5.17 and later). Debian 12's kernels ship
// uncompressed .ko files.
func Compressed(p string) bool { return path.Ext(p) != ".ko" }

// Deps is a parsed modules.dep: every module's path, relative to the
// lib/modules/<version> directory, and the paths of the modules it needs.
type Deps struct {
	paths []string            // in file order
	needs map[string][]string // as listed: modprobe loads them last to first
}

// ParseDeps reads modules.dep ("kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko
// kernel/fs/mbcache.ko ..."), one module per line.
func ParseDeps(r io.Reader) (*Deps, error) {
	d := &Deps{needs: map[string][]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		mod, rest, ok := strings.Cut(text, ":")
		if !ok {
			return nil, fmt.Errorf("modules.dep:%d: no colon", line)
		}
		needs := strings.Fields(rest)
		for _, p := range append([]string{mod}, needs...) {
			if !validModulePath(p) {
				return nil, fmt.Errorf("modules.dep:%d: bad module path %q", line, p)
			}
		}
		if _, dup := d.needs[mod]; dup {
			return nil, fmt.Errorf("modules.dep:%d: %s listed twice", line, mod)
		}
		d.paths = append(d.paths, mod)
		d.needs[mod] = needs
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("modules.dep: %w", err)
	}
	return d, nil
}

func validModulePath(p string) bool {
	return p != "" && !strings.HasPrefix(p, "/") && path.Clean(p) == p &&
		!strings.HasPrefix(p, "../") && p != ".." &&
		len(path.Base(p)) > len(moduleSuffix(p)) && moduleSuffix(p) != ""
}

// Paths returns every module listed, in file order.
func (d *Deps) Paths() []string { return d.paths }

// LoadOrder returns the modules at paths and every module they need, each
// once, every module after all the modules it needs; modules that do not
// depend on each other keep the order of paths. It fails on a module that
// modules.dep does not list and on a dependency cycle.
func (d *Deps) LoadOrder(paths []string) ([]string, error) {
	return Order(paths, d.Needs)
}

// Needs lists the modules p needs in the order modprobe loads them, or
// fails if modules.dep does not list p.
func (d *Deps) Needs(p string) ([]string, error) {
	needs, ok := d.needs[p]
	if !ok {
		return nil, fmt.Errorf("module %s is not in modules.dep", p)
	}
	out := make([]string, len(needs))
	for i, n := range needs {
		out[len(needs)-1-i] = n
	}
	return out, nil
}

// Order walks the graph that next describes depth first from roots and
// returns every node reached, each after the nodes next lists for it; it
// fails on a cycle and on an error of next.
func Order(roots []string, next func(string) ([]string, error)) ([]string, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var out []string
	var visit func(p string, chain []string) error
	visit = func(p string, chain []string) error {
		switch state[p] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(chain, " -> "), p)
		}
		state[p] = visiting
		ns, err := next(p)
		if err != nil {
			return err
		}
		for _, n := range ns {
			if err := visit(n, append(chain, p)); err != nil {
				return err
			}
		}
		state[p] = done
		out = append(out, p)
		return nil
	}
	for _, p := range roots {
		if err := visit(p, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// FormatDeps writes modules.dep lines for paths, in the order given, with
// each module's needs as d lists them.
func (d *Deps) FormatDeps(w io.Writer, paths []string) error {
	bw := bufio.NewWriter(w)
	for _, p := range paths {
		needs, ok := d.needs[p]
		if !ok {
			return fmt.Errorf("module %s is not in modules.dep", p)
		}
		bw.WriteString(p)
		bw.WriteString(":")
		for _, n := range needs {
			bw.WriteString(" ")
			bw.WriteString(n)
		}
		bw.WriteString("\n")
	}
	return bw.Flush()
}
