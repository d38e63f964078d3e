package appliance

import (
	"errors"
	"fmt"
	"log/slog"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"blkdom/blkback"
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
	// appliance only parses it; the backend applies it to disks it opens
	// after the change.
	Cache blkback.CachePolicy
	// Engine is blkdom/engine: the rings' I/O engine, one of
	// blkback.Engines (default io_uring); PollTime is blkdom/poll-us, how
	// long a ring is polled after a batch, in microseconds (default 50; 0
	// never polls, kept here as a negative duration, as Options wants).
	// Both are read when the backend starts.
	Engine   string
	PollTime time.Duration
	// Mounts is blkdom/mounts/<n>/{device,mountpoint,fstype,options}:
	// file systems on disks the driver domain owns, mounted in order of
	// n so that images can be files on them. device (an absolute /dev
	// path), mountpoint (absolute; not /, /dev, /proc or /sys) and fstype
	// are required; options is a comma-separated mount(8) option list.
	// Mounted at boot and on change, unmounted at stop after every disk
	// has closed.
	Mounts []Mount
}

// Mount is one file system of blkdom/mounts.
type Mount struct {
	Device     string // blkdom/mounts/<n>/device, e.g. /dev/xvdb1
	Mountpoint string // blkdom/mounts/<n>/mountpoint, e.g. /mnt/images
	FSType     string // blkdom/mounts/<n>/fstype, e.g. ext4
	Options    string // blkdom/mounts/<n>/options, e.g. noatime,discard
}

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
		{"blkdom/mounts/<n>/device", "block device to mount, an absolute /dev path (required)"},
		{"blkdom/mounts/<n>/mountpoint", "absolute directory to mount it on, created if missing; not /, /dev, /proc, /sys (required)"},
		{"blkdom/mounts/<n>/fstype", "file system type, e.g. ext4 or xfs (required)"},
		{"blkdom/mounts/<n>/options", "mount options, comma-separated as for mount(8), e.g. noatime,discard (optional)"},
	}
}

var fsTypeRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.]{0,31}$`)

// ParseConfig turns the keys below ConfigDir (relative to it:
// "log-level", "mounts/0/device") into a Config. A bad value is reported
// and its default used, and a bad mount entry is left out, so one typo
// does not stop the other settings from applying. Unknown keys are errors
// too, so that a misspelled key is noticed.
func ParseConfig(keys map[string]string) (Config, error) {
	c := Config{LogLevel: slog.LevelInfo, Cache: blkback.CacheAuto}
	var errs []error
	mounts := map[int]*Mount{}
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
			// Read by the backend itself when it starts; checked here so a
			// typo is reported with the other settings.
			if v != "0" && v != "1" {
				errs = append(errs, fmt.Errorf("%s/ebpf: %q is not 0 or 1", ConfigDir, v))
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
				m = &Mount{}
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

// check rejects a mount entry that is incomplete or would cover a file
// system the driver domain itself needs.
func (m Mount) check() error {
	switch {
	case m.Device == "" || m.Mountpoint == "" || m.FSType == "":
		return errors.New("device, mountpoint and fstype are required")
	case !strings.HasPrefix(m.Device, "/dev/") || path.Clean(m.Device) != m.Device:
		return fmt.Errorf("device %q is not a clean path under /dev", m.Device)
	case !strings.HasPrefix(m.Mountpoint, "/") || path.Clean(m.Mountpoint) != m.Mountpoint:
		return fmt.Errorf("mountpoint %q is not a clean absolute path", m.Mountpoint)
	case !fsTypeRE.MatchString(m.FSType):
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
