package kmodule

import (
	"os"
	"path/filepath"
	"sync"
)

// Loader loads the modules of one module tree (a lib/modules/<release>
// directory) into the running kernel, each at most once, each after the
// modules it needs. Its methods may be called from several goroutines: a
// module one caller is loading is waited for, not loaded twice, so PID 1
// can load what it needs first and the rest in the background.
type Loader struct {
	dir    string
	deps   *Deps
	byName map[string]string // module name -> path
	// insert puts one module file into the kernel (finit_module; a test
	// records the calls instead).
	insert func(file string) error

	mu    sync.Mutex
	loads map[string]*load // by path, once started
}

// load is one module's load: done is closed when err is final.
type load struct {
	done chan struct{}
	err  error
}

// Result is the outcome of loading one module.
type Result struct {
	Name string // the kernel's name, e.g. xen_gntdev
	Err  error  // nil: loaded now, before, or built in
}

// NewLoader reads dir/modules.dep and returns a Loader for the modules it
// lists.
func NewLoader(dir string) (*Loader, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	deps, err := ParseDeps(f)
	if err != nil {
		return nil, err
	}
	l := &Loader{dir: dir, deps: deps, byName: map[string]string{}, insert: insert, loads: map[string]*load{}}
	for _, p := range deps.Paths() {
		l.byName[ModuleName(p)] = p
	}
	return l, nil
}

// Paths returns every module of the tree in modules.dep's order.
func (l *Loader) Paths() []string { return l.deps.Paths() }

// Lookup returns the path of the module called name ("xen-gntdev" or
// "xen_gntdev"), if the tree has it.
func (l *Loader) Lookup(name string) (string, bool) {
	p, ok := l.byName[ModuleName(name)]
	return p, ok
}

// Load loads the modules at paths and every module they need, in
// dependency order, and returns one Result per module, in that order. A
// module that fails (a Xen driver on bare metal says ENODEV) is reported
// and the rest are still tried. The error is for a path the tree does
// not list or a dependency cycle; then nothing is loaded.
func (l *Loader) Load(paths []string) ([]Result, error) {
	order, err := l.deps.LoadOrder(paths)
	if err != nil {
		return nil, err
	}
	out := make([]Result, 0, len(order))
	for _, p := range order {
		out = append(out, Result{ModuleName(p), l.loadOne(p)})
	}
	return out, nil
}

// loadOne loads the module at p unless it is loading or loaded already,
// and returns the outcome of its one load.
func (l *Loader) loadOne(p string) error {
	l.mu.Lock()
	ld, started := l.loads[p]
	if !started {
		ld = &load{done: make(chan struct{})}
		l.loads[p] = ld
	}
	l.mu.Unlock()
	if started {
		<-ld.done
		return ld.err
	}
	ld.err = l.insert(filepath.Join(l.dir, filepath.FromSlash(p)))
	close(ld.done)
	return ld.err
}
