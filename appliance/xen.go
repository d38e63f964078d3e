package appliance

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"blkdom/xs"
)

// detectXen reports whether the domain below root ("/" but in tests)
// runs on Xen, and the evidence: the hypervisor type in sysfs, which the
// kernel fills in on Xen only, or a Xen device that only exists there.
func detectXen(root string) (string, bool) {
	if b, err := os.ReadFile(filepath.Join(root, "sys/hypervisor/type")); err == nil {
		if t := strings.TrimSpace(string(b)); t == "xen" {
			return "/sys/hypervisor/type is xen", true
		}
	}
	for _, p := range []string{"/proc/xen/capabilities", xs.DefaultXenbus} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			return p + " exists", true
		}
	}
	return "", false
}

// maxConfigKeys bounds how much of ConfigDir readConfig reads, whatever
// was written there.
const maxConfigKeys = 256

// readConfig reads every key below ConfigDir into a map of paths relative
// to it ("log-level", "mounts/0/device"), for ParseConfig; below a key
// that has a value it does not look. A missing ConfigDir is an empty
// configuration.
func readConfig(c *xs.Client) (map[string]string, error) {
	keys := map[string]string{}
	var walk func(rel string, depth int) error
	walk = func(rel string, depth int) error {
		children, err := c.Directory(path.Join(ConfigDir, rel))
		if err != nil {
			return err
		}
		for _, name := range children {
			if len(keys) >= maxConfigKeys {
				return errors.New(ConfigDir + ": too many keys")
			}
			k := path.Join(rel, name)
			v, err := c.Read(path.Join(ConfigDir, k))
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed while we read
			}
			if err != nil {
				return err
			}
			keys[k] = v
			// A key with a value is a leaf: the directories of blkdom's
			// keys (mounts/<n>, net/<ifname>) have none, as xenstore-write
			// leaves them. Not listing the leaves halves the round trips:
			// 15 of them took 0.180 s in an e2e boot under TCG.
			if depth < 3 && v == "" {
				if err := walk(k, depth+1); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return err
				}
			}
		}
		return nil
	}
	if err := walk("", 1); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return keys, nil
}

// kernelArg returns the value of name=value on the kernel command line in
// the file cmdline (/proc/cmdline), or "" if it is not there.
func kernelArg(cmdline, name string) string {
	b, err := os.ReadFile(cmdline)
	if err != nil {
		return ""
	}
	v := ""
	for _, f := range strings.Fields(string(b)) {
		if k, val, _ := strings.Cut(f, "="); k == name {
			v = val // the last one wins, as for the kernel's own
		}
	}
	return v
}

// StatusDir is where blkdom publishes the state of what it configures
// (blkdom/net and blkdom/mounts entries), relative to the domain's home:
// data/ is the one directory there that a domain may write and dom0 read.
const StatusDir = "data/blkdom"

// publishStatus writes StatusDir/<rel>/state and StatusDir/<rel>/error
// (empty when err is nil) in one transaction.
func publishStatus(c *xs.Client, rel, state string, err error) error {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	dir := path.Join(StatusDir, rel)
	return c.Transaction(func(tx *xs.Tx) error {
		if err := tx.Write(dir+"/state", state); err != nil {
			return err
		}
		return tx.Write(dir+"/error", msg)
	})
}
