package kmodule

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
)

// loaderTree writes a modules.dep into a temporary directory and returns
// a Loader for it whose kernel calls are recorded, failing for fail.
func loaderTree(t *testing.T, dep string, fail string) (*Loader, func() []string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := NewLoader(dir)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var calls []string
	l.insert = func(file string) error {
		rel, _ := filepath.Rel(dir, file)
		mu.Lock()
		calls = append(calls, rel)
		mu.Unlock()
		if rel == fail {
			return errors.New("no such device")
		}
		return nil
	}
	return l, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), calls...)
	}
}

const loaderDeps = `k/evtchn.ko:
k/gntdev.ko:
k/crc16.ko:
k/jbd2.ko:
k/ext4.ko: k/jbd2.ko k/crc16.ko
k/xfs.ko:
`

func TestLoaderFirstThenRest(t *testing.T) {
	l, calls := loaderTree(t, loaderDeps, "k/xfs.ko")
	if p, ok := l.Lookup("ext4"); !ok || p != "k/ext4.ko" {
		t.Fatalf("Lookup(ext4) = %q, %v", p, ok)
	}
	if _, ok := l.Lookup("nfs"); ok {
		t.Fatal("Lookup found a module the tree lacks")
	}
	first, err := l.Load([]string{"k/ext4.ko"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Result{{"crc16", nil}, {"jbd2", nil}, {"ext4", nil}}
	if !reflect.DeepEqual(first, want) {
		t.Errorf("first Load = %v, want %v", first, want)
	}
	all, err := l.Load(l.Paths())
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 6 || all[5].Name != "xfs" || all[5].Err == nil {
		t.Errorf("Load of all = %v, want 6 results, xfs failed", all)
	}
	// Each module went to the kernel once, however often it was asked for.
	if got, want := calls(), []string{"k/crc16.ko", "k/jbd2.ko", "k/ext4.ko", "k/evtchn.ko", "k/gntdev.ko", "k/xfs.ko"}; !reflect.DeepEqual(got, want) {
		t.Errorf("kernel calls %q, want %q", got, want)
	}
	if _, err := l.Load([]string{"k/nfs.ko"}); err == nil {
		t.Error("Load of a module the tree lacks succeeded")
	}
}

// TestLoaderConcurrent: callers racing for the same modules load each
// once, and each caller sees every module it needs done when Load returns.
func TestLoaderConcurrent(t *testing.T) {
	l, calls := loaderTree(t, loaderDeps, "")
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := l.Load([]string{"k/ext4.ko", "k/gntdev.ko"})
			if err != nil || len(res) != 4 {
				t.Errorf("Load = %v, %v", res, err)
			}
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for _, c := range calls() {
		seen[c]++
	}
	for _, p := range []string{"k/crc16.ko", "k/jbd2.ko", "k/ext4.ko", "k/gntdev.ko"} {
		if seen[p] != 1 {
			t.Errorf("%s loaded %d times", p, seen[p])
		}
	}
}
