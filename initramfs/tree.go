package initramfs

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"blkdom/kmodule"
)

// tree is a kernel's lib/modules/<version> directory as depmod left it: the
// builder's source of modules and of the facts needed to pick them.
type tree struct {
	dir     string
	deps    *kmodule.Deps
	byName  map[string]string   // module name -> path
	aliases [][2]string         // {pattern, module name}, normalized, file order
	softPre map[string][]string // module name -> names to load before it
	builtin map[string]bool     // module names built into the kernel
}

// openTree reads modules.dep and, when present, modules.alias,
// modules.softdep and modules.builtin from dir.
func openTree(dir string) (*tree, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("%w (run depmod -b on the kernel tree)", err)
	}
	deps, err := kmodule.ParseDeps(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	t := &tree{dir: dir, deps: deps, byName: map[string]string{},
		softPre: map[string][]string{}, builtin: map[string]bool{}}
	for _, p := range deps.Paths() {
		t.byName[kmodule.ModuleName(p)] = p
	}
	err = eachLine(filepath.Join(dir, "modules.alias"), func(f []string) {
		if len(f) == 3 && f[0] == "alias" {
			t.aliases = append(t.aliases, [2]string{normalize(f[1]), kmodule.ModuleName(f[2])})
		}
	})
	if err != nil {
		return nil, err
	}
	err = eachLine(filepath.Join(dir, "modules.softdep"), func(f []string) {
		// softdep MODULE [pre: NAME...] [post: NAME...]; only "pre"
		// changes what must be loaded first.
		if len(f) < 2 || f[0] != "softdep" {
			return
		}
		m, pre := kmodule.ModuleName(f[1]), false
		for _, w := range f[2:] {
			switch w {
			case "pre:":
				pre = true
			case "post:":
				pre = false
			default:
				if pre {
					t.softPre[m] = append(t.softPre[m], w)
				}
			}
		}
	})
	if err != nil {
		return nil, err
	}
	err = eachLine(filepath.Join(dir, "modules.builtin"), func(f []string) {
		if len(f) == 1 {
			t.builtin[kmodule.ModuleName(f[0])] = true
		}
	})
	return t, err
}

// eachLine calls fn with the fields of each line of the file at name; a
// missing file has no lines.
func eachLine(name string, fn func([]string)) error {
	f, err := os.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 && f[0][0] != '#' {
			fn(f)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// normalize makes a module name or alias comparable: dashes become
// underscores, as kmod does.
func normalize(s string) string { return strings.ReplaceAll(s, "-", "_") }

// resolve finds the module files for name: a module of that name, else
// every module with a matching alias ("crypto-crc32c" names crc32c_intel
// and crc32c_generic). builtin is true when the kernel has the module built
// in, so nothing needs loading. Neither means that the kernel lacks it.
func (t *tree) resolve(name string) (paths []string, builtin bool) {
	n := normalize(name)
	if p, ok := t.byName[kmodule.ModuleName(n)]; ok {
		return []string{p}, false
	}
	if t.builtin[kmodule.ModuleName(n)] {
		return nil, true
	}
	seen := map[string]bool{}
	for _, a := range t.aliases {
		if ok, _ := path.Match(a[0], n); !ok || seen[a[1]] {
			continue
		}
		seen[a[1]] = true
		if p, ok := t.byName[a[1]]; ok {
			paths = append(paths, p)
		} else if t.builtin[a[1]] {
			builtin = true
		}
	}
	return paths, builtin && len(paths) == 0
}

// loadOrder returns roots and everything they need, hard dependencies from
// modules.dep and "pre:" soft dependencies alike, each module after what it
// needs. A soft dependency the tree cannot resolve is skipped, as modprobe
// skips it.
func (t *tree) loadOrder(roots []string) ([]string, error) {
	return kmodule.Order(roots, func(p string) ([]string, error) {
		hard, err := t.deps.Needs(p)
		if err != nil {
			return nil, err
		}
		var soft []string
		for _, name := range t.softPre[kmodule.ModuleName(p)] {
			ps, _ := t.resolve(name)
			soft = append(soft, ps...)
		}
		return append(soft, hard...), nil
	})
}
