package appliance

import (
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"blkdom/blkback"
	"blkdom/rtnl"
)

func TestParseConfig(t *testing.T) {
	mount0 := Mount{Device: "/dev/xvdb1", Mountpoint: "/mnt/images", FSType: "ext4", Options: "noatime,discard"}
	mount1 := Mount{Device: "/dev/nvme0n1", Mountpoint: "/srv/vm", FSType: "xfs", N: 1}
	defaults := Config{LogLevel: slog.LevelInfo, Cache: blkback.CacheAuto}
	with := func(f func(*Config)) Config { c := defaults; f(&c); return c }
	for _, tc := range []struct {
		name string
		keys map[string]string
		want Config
		errs []string // substrings the error must contain; none: no error
	}{
		{"empty", map[string]string{}, defaults, nil},
		{"all set", map[string]string{
			"log-level": "debug", "cache": "grant-copy", "mounts": "",
			"mounts/1": "", "mounts/1/device": "/dev/nvme0n1", "mounts/1/mountpoint": "/srv/vm", "mounts/1/fstype": "xfs",
			"mounts/0": "", "mounts/0/device": "/dev/xvdb1", "mounts/0/mountpoint": "/mnt/images",
			"mounts/0/fstype": "ext4", "mounts/0/options": "noatime,discard",
		}, Config{LogLevel: slog.LevelDebug, Cache: blkback.CacheGrantCopy, Mounts: []Mount{mount0, mount1}}, nil},
		{"levels and policies", map[string]string{"log-level": " warn\n", "cache": "direct"},
			with(func(c *Config) { c.LogLevel, c.Cache = slog.LevelWarn, blkback.CacheDirect }), nil},
		{"error level, buffered", map[string]string{"log-level": "error", "cache": "buffered"},
			with(func(c *Config) { c.LogLevel, c.Cache = slog.LevelError, blkback.CacheBuffered }), nil},
		{"bad values keep defaults", map[string]string{"log-level": "loud", "cache": "writeback", "engine": "aio", "poll-us": "-5"},
			defaults, []string{"blkdom/log-level", "blkdom/cache", "blkdom/engine", "blkdom/poll-us"}},
		{"engine and polling", map[string]string{"engine": "io_uring", "poll-us": "0"},
			with(func(c *Config) { c.Engine, c.PollTime = blkback.EngineUring, -1 }), nil},
		{"upgrade", map[string]string{"upgrade": "/mnt/images/blkdom"},
			with(func(c *Config) { c.Upgrade = "/mnt/images/blkdom" }), nil},
		{"bad upgrade paths", map[string]string{"upgrade": "blkdom"}, defaults, []string{"blkdom/upgrade: \"blkdom\" is not a clean absolute path"}},
		{"unclean upgrade path", map[string]string{"upgrade": "/mnt/../blkdom"}, defaults, []string{"blkdom/upgrade"}},
		{"unknown keys", map[string]string{"loglevel": "debug", "mounts/0/fs": "ext4"},
			defaults, []string{"blkdom/loglevel: unknown key", "blkdom/mounts/0/fs: unknown key", "blkdom/mounts/0: device, mountpoint and fstype are required"}},
		{"bad entry left out, good kept", map[string]string{
			"mounts/0/device": "/dev/xvdb1", "mounts/0/mountpoint": "/mnt/images", "mounts/0/fstype": "ext4", "mounts/0/options": "noatime,discard",
			"mounts/1/device": "/dev/xvdc", "mounts/1/mountpoint": "/", "mounts/1/fstype": "ext4",
		}, with(func(c *Config) { c.Mounts = []Mount{mount0} }), []string{"blkdom/mounts/1: mountpoint / would hide"}},
		{"bad numbers", map[string]string{"mounts/01/device": "/dev/x", "mounts/-1/device": "/dev/x", "mounts/a": ""},
			defaults, []string{"mounts/01/device: mount entries are numbered", "mounts/-1/device", "mounts/a"}},
		{"network interfaces", map[string]string{"net": "", "net/eth1": "", "net/eth1/address": "fe80::2/64",
			"net/eth0/address": "169.254.1.2/16", "net/eth0/gateway": "169.254.1.1", "net/eth0/mtu": "9000"},
			with(func(c *Config) {
				c.Net = []rtnl.Interface{
					{Name: "eth0", Addr: netip.MustParsePrefix("169.254.1.2/16"), Gateway: netip.MustParseAddr("169.254.1.1"), MTU: 9000},
					{Name: "eth1", Addr: netip.MustParsePrefix("fe80::2/64")}}
			}), nil},
		{"bad network keys", map[string]string{"net/eth0/address": "169.254.1.2", "net/eth0/mtu": "20",
			"net/eth0/gw": "x", "net/eth1/gateway": "169.254.1.1", "net/a b/mtu": "1500",
			"net/eth2/gateway": "fe80::1", "net/eth2/address": "169.254.1.3/16", "net/eth3/address": "fe80::1%eth0/64"},
			defaults,
			[]string{"net/eth0/address: \"169.254.1.2\" is not an address/prefix", "net/eth0/mtu", "net/eth0/gw: unknown key",
				"net/eth1: eth1: a gateway needs an address", `"a b" is not an interface name`, "different families", "zones"}},
		{"twice the same mountpoint", map[string]string{
			"mounts/0/device": "/dev/a", "mounts/0/mountpoint": "/mnt", "mounts/0/fstype": "ext4",
			"mounts/1/device": "/dev/b", "mounts/1/mountpoint": "/mnt", "mounts/1/fstype": "ext4",
		}, with(func(c *Config) { c.Mounts = []Mount{{Device: "/dev/a", Mountpoint: "/mnt", FSType: "ext4"}} }),
			[]string{"blkdom/mounts/1: mountpoint used twice"}},
		{"nfs", map[string]string{
			"mounts/2/device": "169.254.1.1:/srv/nfs", "mounts/2/mountpoint": "/mnt/nfs", "mounts/2/fstype": "nfs",
			"mounts/2/options": "vers=3,nolock,proto=tcp",
			"mounts/3/device":  "[fe80::1]:/", "mounts/3/mountpoint": "/mnt/v6", "mounts/3/fstype": "nfs4",
			"mounts/4/device": "filer.example:/vol/a", "mounts/4/mountpoint": "/mnt/a", "mounts/4/fstype": "nfs",
			"mounts/4/options": "vers=4.2,addr=169.254.1.1",
			"mounts/5/device":  "/dev/xvdb", "mounts/5/mountpoint": "/mnt/b", "mounts/5/fstype": "nfs",
			"mounts/6/device": "169.254.1.1:srv", "mounts/6/mountpoint": "/mnt/c", "mounts/6/fstype": "nfs",
			"mounts/7/device": "h:/a/../b", "mounts/7/mountpoint": "/mnt/d", "mounts/7/fstype": "nfs",
			"mounts/8/device": "[169.254.1.1]:/a", "mounts/8/mountpoint": "/mnt/e", "mounts/8/fstype": "nfs",
		}, with(func(c *Config) {
			c.Mounts = []Mount{
				{Device: "169.254.1.1:/srv/nfs", Mountpoint: "/mnt/nfs", FSType: "nfs", Options: "vers=3,nolock,proto=tcp", N: 2},
				{Device: "[fe80::1]:/", Mountpoint: "/mnt/v6", FSType: "nfs4", N: 3},
				{Device: "filer.example:/vol/a", Mountpoint: "/mnt/a", FSType: "nfs", Options: "vers=4.2,addr=169.254.1.1", N: 4}}
		}),
			[]string{`mounts/5: device "/dev/xvdb" is not host:/export`, "mounts/6", "mounts/7", "mounts/8"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseConfig(tc.keys)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
			if len(tc.errs) == 0 && err != nil {
				t.Errorf("error %v", err)
			}
			if len(tc.errs) > 0 && err == nil {
				t.Fatalf("no error, want %q", tc.errs)
			}
			for _, e := range tc.errs {
				if !strings.Contains(err.Error(), e) {
					t.Errorf("error %q lacks %q", err, e)
				}
			}
		})
	}
}

func TestMountCheck(t *testing.T) {
	good := Mount{Device: "/dev/xvdb1", Mountpoint: "/mnt/a", FSType: "ext4", Options: "ro,nosuid"}
	if err := good.check(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []func(*Mount){
		func(m *Mount) { m.Device = "" },
		func(m *Mount) { m.Device = "xvdb1" },
		func(m *Mount) { m.Device = "/etc/passwd" },
		func(m *Mount) { m.Device = "/dev/../etc/x" },
		func(m *Mount) { m.Mountpoint = "" },
		func(m *Mount) { m.Mountpoint = "mnt" },
		func(m *Mount) { m.Mountpoint = "/mnt/../proc" },
		func(m *Mount) { m.Mountpoint = "/" },
		func(m *Mount) { m.Mountpoint = "/dev" },
		func(m *Mount) { m.Mountpoint = "/proc/xen" },
		func(m *Mount) { m.Mountpoint = "/sys/fs/bpf" },
		func(m *Mount) { m.FSType = "" },
		func(m *Mount) { m.FSType = "Ext4" },
		func(m *Mount) { m.FSType = "ext4 x" },
		func(m *Mount) { m.Options = "ro nosuid" },
		func(m *Mount) { m.Options = `context="x"` },
		func(m *Mount) { m.Options = "a\x00b" },
	} {
		m := good
		bad(&m)
		if err := m.check(); err == nil {
			t.Errorf("%+v passed the check", m)
		}
	}
	// Mountpoints that only look like system ones are fine.
	for _, mp := range []string{"/devices", "/process", "/system/x", "/tmp/a", "/run/images"} {
		m := good
		m.Mountpoint = mp
		if err := m.check(); err != nil {
			t.Errorf("%s: %v", mp, err)
		}
	}
}

func TestMountOptions(t *testing.T) {
	for _, tc := range []struct {
		in    string
		flags uintptr
		data  string
	}{
		{"", 0, ""},
		{"defaults", 0, ""},
		{"rw,noatime,discard", unix.MS_NOATIME, "discard"},
		{"ro,nosuid,nodev,noexec,sync,dirsync", unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_SYNCHRONOUS | unix.MS_DIRSYNC, ""},
		{"nodiratime,relatime,strictatime,lazytime", unix.MS_NODIRATIME | unix.MS_RELATIME | unix.MS_STRICTATIME | unix.MS_LAZYTIME, ""},
		{"data=ordered,,commit=30,ro", unix.MS_RDONLY, "data=ordered,commit=30"},
	} {
		flags, data, err := mountOptions(tc.in)
		if err != nil || flags != tc.flags || data != tc.data {
			t.Errorf("mountOptions(%q) = %#x, %q, %v; want %#x, %q", tc.in, flags, data, err, tc.flags, tc.data)
		}
	}
}

// TestConfigKeys checks that the README's list and the parser agree: every
// listed key is accepted with a sensible value, and nothing else is
// documented without being parsed.
func TestConfigKeys(t *testing.T) {
	examples := map[string]string{
		"log-level": "warn", "cache": "direct", "ebpf": "1", "engine": "workers", "poll-us": "20", "mounts/0/device": "/dev/xvdb",
		"mounts/0/mountpoint": "/mnt/x", "mounts/0/fstype": "ext4", "mounts/0/options": "ro",
		"net/eth0/address": "169.254.1.2/16", "net/eth0/gateway": "169.254.1.1", "net/eth0/mtu": "1400",
		"upgrade": "/mnt/x/blkdom",
	}
	keys := map[string]string{}
	for _, k := range ConfigKeys() {
		if k.Doc == "" {
			t.Errorf("%s has no doc", k.Key)
		}
		rel := strings.Replace(strings.TrimPrefix(k.Key, ConfigDir+"/"), "<n>", "0", 1)
		rel = strings.Replace(rel, "<ifname>", "eth0", 1)
		v, ok := examples[rel]
		if !ok {
			t.Fatalf("documented key %s has no example here", k.Key)
		}
		keys[rel] = v
	}
	if len(keys) != len(examples) {
		t.Errorf("ConfigKeys lists %d keys, the parser knows %d", len(keys), len(examples))
	}
	c, err := ParseConfig(keys)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{LogLevel: slog.LevelWarn, Cache: blkback.CacheDirect, Engine: blkback.EngineWorkers, EBPF: true,
		PollTime: 20 * time.Microsecond, Mounts: []Mount{{"/dev/xvdb", "/mnt/x", "ext4", "ro", 0}},
		Net: []rtnl.Interface{{Name: "eth0", Addr: netip.MustParsePrefix("169.254.1.2/16"),
			Gateway: netip.MustParseAddr("169.254.1.1"), MTU: 1400}}, Upgrade: "/mnt/x/blkdom"}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got %+v, want %+v", c, want)
	}
}

// FuzzParseConfig: whatever is in xenstore, parsing returns, and every
// mount it keeps passes the checks.
func FuzzParseConfig(f *testing.F) {
	f.Add("log-level", "debug", "mounts/0/device", "/dev/xvdb", "mounts/0/mountpoint", "/mnt")
	f.Add("cache", "direct", "mounts/0/fstype", "ext4", "mounts/0/options", "ro,x=1")
	f.Add("mounts/99999999999999999999/device", "", "mounts", "x", "mounts/0/", "")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3, v3 string) {
		base := map[string]string{"mounts/0/device": "/dev/xvdb", "mounts/0/mountpoint": "/mnt", "mounts/0/fstype": "ext4"}
		base[k1], base[k2], base[k3] = v1, v2, v3
		c, _ := ParseConfig(base)
		for _, m := range c.Mounts {
			if err := m.check(); err != nil {
				t.Fatalf("kept %+v: %v", m, err)
			}
		}
	})
}

func TestFSData(t *testing.T) {
	for _, c := range []struct {
		m    Mount
		data string
		want string
	}{
		{Mount{Device: "/dev/xvdb", FSType: "ext4"}, "discard", "discard"},
		{Mount{Device: "169.254.1.1:/srv/nfs", FSType: "nfs"}, "vers=3,nolock", "vers=3,nolock,addr=169.254.1.1"},
		{Mount{Device: "169.254.1.1:/srv/nfs", FSType: "nfs4"}, "", "addr=169.254.1.1"},
		{Mount{Device: "[fe80::1]:/", FSType: "nfs"}, "vers=4.2", "vers=4.2,addr=fe80::1"},
		{Mount{Device: "169.254.1.1:/srv/nfs", FSType: "nfs"}, "vers=3,addr=169.254.9.9", "vers=3,addr=169.254.9.9"},
		{Mount{Device: "filer:/srv/nfs", FSType: "nfs"}, "vers=3", "vers=3"},
	} {
		if got := c.m.fsData(c.data); got != c.want {
			t.Errorf("%s %q: data %q, want %q", c.m.Device, c.data, got, c.want)
		}
	}
}

// The name checks that replaced the regular expressions keep their edges.
func TestNames(t *testing.T) {
	for _, tc := range []struct {
		check func(string) bool
		s     string
		want  bool
	}{
		{isFSType, "ext4", true}, {isFSType, "fuse.sshfs", true}, {isFSType, "Ext4", false},
		{isFSType, "_x", false}, {isFSType, strings.Repeat("x", 32), true}, {isFSType, strings.Repeat("x", 33), false},
		{isFSType, "", false}, {isIfName, "eth0", true}, {isIfName, "_x.y-z", true}, {isIfName, "-x", false},
		{isIfName, strings.Repeat("e", 15), true}, {isIfName, strings.Repeat("e", 16), false}, {isIfName, "a b", false},
		{isHost, "nfs.example", true}, {isHost, "-nfs", false}, {isHost, "a_b", false},
		{isHost, strings.Repeat("a", 253), true}, {isHost, strings.Repeat("a", 254), false},
	} {
		if got := tc.check(tc.s); got != tc.want {
			t.Errorf("check(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}
