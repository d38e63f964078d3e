package appliance

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"blkdom/blkback"
	"blkdom/rtnl"
)

// ConfigDir is the xenstore directory of blkdom's own settings, relative
// to the driver domain's home (/local/domain/<domid>/blkdom). The
// toolstack in dom0 writes it; blkdom reads it at boot and watches it.
const ConfigDir = "blkdom"

// Config is blkdom's own configuration, read from ConfigDir. Each field
// documents its key; ConfigKeys lists them for the README.
type Config struct {
	// LogLevel is blkdom/log-level: debug, info, warn or error (default
	// info). A change applies at once.
	LogLevel slog.Level
	// Cache is blkdom/cache: how images are opened unless a disk says
	// otherwise: one of blkback.CachePolicies (default auto). The
	// appliance only parses it; the backend asks for it (Host.Config)
	// each time a disk connects.
	Cache blkback.CachePolicy
	// Engine is blkdom/engine: the rings' I/O engine, one of
	// blkback.Engines (default io_uring); PollTime is blkdom/poll-us, how
	// long a ring is polled after a batch, in microseconds (default 50; 0
	// never polls, kept here as a negative duration, as Options wants).
	// Both are read when the backend starts.
	Engine   string
	PollTime time.Duration
	// EBPF is blkdom/ebpf: 1 loads the eBPF probes (default 0), in the
	// background when the backend starts.
	EBPF bool
	// Mounts is blkdom/mounts/<n>/{device,mountpoint,fstype,options}:
	// file systems on disks the driver domain owns or on network storage,
	// mounted in order of n so that images can be files on them. device
	// (an absolute /dev path, or host:/export for fstype nfs or nfs4),
	// mountpoint (absolute; not /, /dev, /proc or /sys) and fstype are
	// required; options is a comma-separated mount(8) option list, for
	// NFS the kernel's own (vers=3,nolock,proto=tcp...; addr= is added
	// from an IP-address host). Local file systems are mounted at boot
	// and on change; network ones in the background, retried until the
	// server answers. All are unmounted at stop after every disk has
	// closed.
	Mounts []Mount
	// Net is blkdom/net/<ifname>/{address,gateway,mtu}: the network
	// interfaces to bring up (besides lo, always up), in name order,
	// each with an optional static address/prefix, default route and
	// MTU. Applied at boot before the mounts and again on change; an
	// address or route that leaves the configuration stays until reboot.
	Net []rtnl.Interface
	// Upgrade is blkdom/upgrade: the absolute path of a new blkdom binary
	// (on a configured mount, or the initramfs). Writing it asks PID 1 to
	// check the binary (a regular executable file whose "version" answers
	// "blkdom ...") and hand every ring over to it, as SIGUSR2 does in
	// dom0: the guests stay connected and the domain is not rebooted.
	// Only a change acts: the value found at boot, or after a hand-over,
	// is not an upgrade request. The outcome is in StatusDir/upgrade.
	Upgrade string
}

// Mount is one file system of blkdom/mounts.
type Mount struct {
	Device     string // blkdom/mounts/<n>/device, e.g. /dev/xvdb1 or 169.254.1.1:/srv/nfs
	Mountpoint string // blkdom/mounts/<n>/mountpoint, e.g. /mnt/images
	FSType     string // blkdom/mounts/<n>/fstype, e.g. ext4 or nfs
	Options    string // blkdom/mounts/<n>/options, e.g. noatime,discard
	N          int    // <n>: where its state is published (StatusDir/mounts/<n>)
}

// networkFS are the file system types whose device is host:/export and
// whose server may be unreachable for a while: they mount in the
// background, retried until they succeed.
var networkFS = map[string]bool{"nfs": true, "nfs4": true}

// Network says whether m is on network storage (see networkFS).
func (m Mount) Network() bool { return networkFS[m.FSType] }

func (m Mount) String() string {
	return fmt.Sprintf("%s on %s type %s (%s)", m.Device, m.Mountpoint, m.FSType, m.Options)
}

// KeyDoc is one configuration key and what it means.
type KeyDoc struct{ Key, Doc string }

// ConfigKeys lists every key of ConfigDir, relative to the domain's home.
func ConfigKeys() []KeyDoc {
	return []KeyDoc{
		{"blkdom/log-level", "debug, info, warn or error (default info); applies at once"},
		{"blkdom/cache", "default cache policy for images: " + blkback.CachePolicyNames() + " (default auto)"},
		{"blkdom/engine", "the rings' I/O engine: " + strings.Join(blkback.Engines, " or ") + " (default io_uring); read when the backend starts"},
		{"blkdom/poll-us", "microseconds a ring is polled after a batch before its event channel is re-armed (default 50; 0 never polls); read when the backend starts"},
		{"blkdom/ebpf", "1 loads the eBPF probes for late network references to granted pages (default 0); read when the backend starts"},
		{"blkdom/upgrade", "absolute path of a new blkdom binary (e.g. on a configured mount): a change hands every ring over to it in place, guests connected (the outcome in data/blkdom/upgrade/{state,error,version})"},
		{"blkdom/net/<ifname>/address", "static address and prefix of network interface <ifname>, e.g. 169.254.1.2/16 (optional: without it the link is only brought up)"},
		{"blkdom/net/<ifname>/gateway", "next hop of a default route through <ifname>, e.g. 169.254.1.1 (optional)"},
		{"blkdom/net/<ifname>/mtu", "MTU of <ifname> (optional)"},
		{"blkdom/mounts/<n>/device", "block device to mount, an absolute /dev path (required)"},
		{"blkdom/mounts/<n>/mountpoint", "absolute directory to mount it on, created if missing; not /, /dev, /proc, /sys (required)"},
		{"blkdom/mounts/<n>/fstype", "file system type, e.g. ext4 or xfs (required)"},
		{"blkdom/mounts/<n>/options", "mount options, comma-separated as for mount(8), e.g. noatime,discard (optional)"},
	}
}

// The characters of file system types, interface names and host names.
const (
	lowerDigits = "abcdefghijklmnopqrstuvwxyz0123456789"
	alnum       = lowerDigits + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
)

// isName reports whether s has 1 to maxLen bytes, the first one of first
// and the others of rest. It stands for what were three regular
// expressions: compiling them was 8.5 ms of blkdom's start on the host
// (hostRE's {0,252} mostly), many times that under emulation, before PID 1
// could do anything.
func isName(s string, maxLen int, first, rest string) bool {
	if s == "" || len(s) > maxLen || strings.IndexByte(first, s[0]) < 0 {
		return false
	}
	for i := 1; i < len(s); i++ {
		if strings.IndexByte(rest, s[i]) < 0 {
			return false
		}
	}
	return true
}

func isFSType(s string) bool { return isName(s, 32, lowerDigits, lowerDigits+"_.") }
func isIfName(s string) bool { return isName(s, 15, alnum+"_", alnum+"_.-") }
func isHost(s string) bool   { return isName(s, 253, alnum, alnum+".-") }

// ParseConfig turns the keys below ConfigDir (relative to it:
// "log-level", "mounts/0/device") into a Config. A bad value is reported
// and its default used, and a bad mount or interface entry is left out, so one typo
// does not stop the other settings from applying. Unknown keys are errors
// too, so that a misspelled key is noticed.
func ParseConfig(keys map[string]string) (Config, error) {
	c := Config{LogLevel: slog.LevelInfo, Cache: blkback.CacheAuto}
	var errs []error
	mounts := map[int]*Mount{}
	nets := map[string]*rtnl.Interface{}
	badNet := map[string]bool{}
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v := strings.TrimSpace(keys[k])
		switch {
		case k == "log-level":
			switch v {
			case "debug":
				c.LogLevel = slog.LevelDebug
			case "info":
				c.LogLevel = slog.LevelInfo
			case "warn":
				c.LogLevel = slog.LevelWarn
			case "error":
				c.LogLevel = slog.LevelError
			default:
				errs = append(errs, fmt.Errorf("%s/log-level: %q is not debug, info, warn or error", ConfigDir, v))
			}
		case k == "cache":
			if p, err := blkback.ParseCachePolicy(v); err != nil {
				errs = append(errs, fmt.Errorf("%s/cache: %w", ConfigDir, err))
			} else {
				c.Cache = p
			}
		case k == "engine":
			if !slices.Contains(blkback.Engines, v) {
				errs = append(errs, fmt.Errorf("%s/engine: %q is not %s", ConfigDir, v, strings.Join(blkback.Engines, " or ")))
			} else {
				c.Engine = v
			}
		case k == "poll-us":
			us, err := strconv.ParseUint(v, 10, 20)
			switch {
			case err != nil:
				errs = append(errs, fmt.Errorf("%s/poll-us: %q is not a number of microseconds below 2^20", ConfigDir, v))
			case us == 0:
				c.PollTime = -1
			default:
				c.PollTime = time.Duration(us) * time.Microsecond
			}
		case k == "ebpf":
			if v != "0" && v != "1" {
				errs = append(errs, fmt.Errorf("%s/ebpf: %q is not 0 or 1", ConfigDir, v))
			}
			c.EBPF = v == "1"
		case k == "upgrade":
			if v != "" && (!path.IsAbs(v) || path.Clean(v) != v) {
				errs = append(errs, fmt.Errorf("%s/upgrade: %q is not a clean absolute path", ConfigDir, v))
			} else {
				c.Upgrade = v
			}
		case k == "net":
		case strings.HasPrefix(k, "net/"):
			name, field, _ := strings.Cut(strings.TrimPrefix(k, "net/"), "/")
			if !isIfName(name) {
				errs = append(errs, fmt.Errorf("%s/%s: %q is not an interface name", ConfigDir, k, name))
				continue
			}
			i := nets[name]
			if i == nil {
				i = &rtnl.Interface{Name: name}
				nets[name] = i
			}
			if err := setNetKey(i, field, v); err != nil {
				errs = append(errs, fmt.Errorf("%s/%s: %w", ConfigDir, k, err))
				badNet[name] = true
			}
		case k == "mounts":
		case strings.HasPrefix(k, "mounts/"):
			ns, field, _ := strings.Cut(strings.TrimPrefix(k, "mounts/"), "/")
			n, err := strconv.Atoi(ns)
			if err != nil || n < 0 || strconv.Itoa(n) != ns {
				errs = append(errs, fmt.Errorf("%s/%s: mount entries are numbered from 0", ConfigDir, k))
				continue
			}
			m := mounts[n]
			if m == nil {
				m = &Mount{N: n}
				mounts[n] = m
			}
			switch field {
			case "":
			case "device":
				m.Device = v
			case "mountpoint":
				m.Mountpoint = v
			case "fstype":
				m.FSType = v
			case "options":
				m.Options = v
			default:
				errs = append(errs, fmt.Errorf("%s/%s: unknown key", ConfigDir, k))
			}
		default:
			errs = append(errs, fmt.Errorf("%s/%s: unknown key", ConfigDir, k))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(nets)) {
		if badNet[name] {
			continue // half an interface's settings would be wrong too
		}
		if err := nets[name].Check(); err != nil {
			errs = append(errs, fmt.Errorf("%s/net/%s: %w", ConfigDir, name, err))
			continue
		}
		c.Net = append(c.Net, *nets[name])
	}
	ns := make([]int, 0, len(mounts))
	for n := range mounts {
		ns = append(ns, n)
	}
	sort.Ints(ns)
	seen := map[string]bool{}
	for _, n := range ns {
		m := *mounts[n]
		err := m.check()
		if err == nil && seen[m.Mountpoint] {
			err = errors.New("mountpoint used twice")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s/mounts/%d: %w", ConfigDir, n, err))
			continue
		}
		seen[m.Mountpoint] = true
		c.Mounts = append(c.Mounts, m)
	}
	return c, errors.Join(errs...)
}

// setNetKey sets the field of blkdom/net/<ifname>/<field> on i.
func setNetKey(i *rtnl.Interface, field, v string) error {
	var err error
	switch field {
	case "":
	case "address":
		i.Addr, err = netip.ParsePrefix(v)
		if err == nil && i.Addr.Addr().Zone() != "" {
			err = errors.New("zones are not supported")
		}
		if err != nil {
			i.Addr = netip.Prefix{}
			return fmt.Errorf("%q is not an address/prefix: %w", v, err)
		}
	case "gateway":
		i.Gateway, err = netip.ParseAddr(v)
		if err == nil && i.Gateway.Zone() != "" {
			err = errors.New("zones are not supported")
		}
		if err != nil {
			i.Gateway = netip.Addr{}
			return fmt.Errorf("%q is not an address: %w", v, err)
		}
	case "mtu":
		n, err := strconv.Atoi(v)
		if err != nil || n < 68 || n > 65535 {
			return fmt.Errorf("%q is not an MTU (68 to 65535)", v)
		}
		i.MTU = n
	default:
		return errors.New("unknown key")
	}
	return nil
}

// check rejects a mount entry that is incomplete or would cover a file
// system the driver domain itself needs.
func (m Mount) check() error {
	switch {
	case m.Device == "" || m.Mountpoint == "" || m.FSType == "":
		return errors.New("device, mountpoint and fstype are required")
	case m.Network():
		if _, _, err := m.export(); err != nil {
			return err
		}
	case !strings.HasPrefix(m.Device, "/dev/") || path.Clean(m.Device) != m.Device:
		return fmt.Errorf("device %q is not a clean path under /dev", m.Device)
	case !strings.HasPrefix(m.Mountpoint, "/") || path.Clean(m.Mountpoint) != m.Mountpoint:
		return fmt.Errorf("mountpoint %q is not a clean absolute path", m.Mountpoint)
	case !isFSType(m.FSType):
		return fmt.Errorf("fstype %q is not a file system name", m.FSType)
	case strings.ContainsAny(m.Options, " \t\n\x00"):
		return fmt.Errorf("options %q contain white space or NUL", m.Options)
	}
	if m.Mountpoint == "/" {
		return errors.New("mountpoint / would hide the driver domain's root")
	}
	for _, sys := range []string{"/dev", "/proc", "/sys"} {
		if m.Mountpoint == sys || strings.HasPrefix(m.Mountpoint, sys+"/") {
			return fmt.Errorf("mountpoint %s is in %s", m.Mountpoint, sys)
		}
	}
	if _, _, err := mountOptions(m.Options); err != nil {
		return err
	}
	return nil
}

// export splits a network mount's device, host:/export (an IPv6 host in
// brackets), into the host and the exported path.
func (m Mount) export() (host, export string, err error) {
	host, export, ok := strings.Cut(m.Device, ":/")
	export = "/" + export
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() {
			ok = false
		}
	} else if _, err := netip.ParseAddr(host); err != nil && !isHost(host) {
		ok = false
	}
	if !ok || path.Clean(export) != export || strings.ContainsAny(m.Device, " \t\n\x00,") {
		return "", "", fmt.Errorf("device %q is not host:/export", m.Device)
	}
	return host, export, nil
}

// fsData is the data string mount(2) gets for m: its file system
// options, and for NFS addr= with the server's address when the options
// lack it and the host is an IP address (the kernel's NFS client does
// not resolve names: mount.nfs normally adds addr=).
func (m Mount) fsData(data string) string {
	if !m.Network() {
		return data
	}
	for _, o := range strings.Split(data, ",") {
		if strings.HasPrefix(o, "addr=") {
			return data
		}
	}
	host, _, err := m.export()
	if err != nil {
		return data
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return data
	}
	if data == "" {
		return "addr=" + host
	}
	return data + ",addr=" + host
}

// mountFlags are the mount(8) options that are mount(2) flags rather than
// file system data; "rw", "defaults" and "auto"-style no-ops set nothing.
var mountFlags = map[string]uintptr{
	"ro": unix.MS_RDONLY, "nosuid": unix.MS_NOSUID, "nodev": unix.MS_NODEV,
	"noexec": unix.MS_NOEXEC, "sync": unix.MS_SYNCHRONOUS, "dirsync": unix.MS_DIRSYNC,
	"noatime": unix.MS_NOATIME, "nodiratime": unix.MS_NODIRATIME,
	"relatime": unix.MS_RELATIME, "strictatime": unix.MS_STRICTATIME,
	"lazytime": unix.MS_LAZYTIME, "rw": 0, "defaults": 0,
}

// mountOptions splits a mount(8) option list into mount(2) flags and the
// data string the file system parses ("noatime,discard" gives MS_NOATIME
// and "discard").
func mountOptions(opts string) (flags uintptr, data string, err error) {
	var rest []string
	for _, o := range strings.Split(opts, ",") {
		if o == "" {
			continue
		}
		if f, ok := mountFlags[o]; ok {
			flags |= f
			continue
		}
		if strings.ContainsAny(o, `"'\`) {
			return 0, "", fmt.Errorf("option %q: quotes are not supported", o)
		}
		rest = append(rest, o)
	}
	return flags, strings.Join(rest, ","), nil
}
