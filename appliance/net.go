package appliance

import (
	"errors"
	"fmt"
	"net"
	"time"

	"blkdom/rtnl"
)

// netSet brings up lo and the interfaces of Config.Net through rtnetlink,
// and remembers what it applied so that a configuration change touches
// only the interfaces it changed.
type netSet struct {
	applied map[string]rtnl.Interface
	// loopback: bring lo up too (PID 1 does; tests leave the host's be).
	loopback bool
	// linkWait is how long an interface named by the configuration may
	// take to appear: its driver (xen-netfront) probes while we boot.
	linkWait time.Duration
	// publish, if set, records an interface's state ("up" or "error")
	// and its last error where dom0 can read it.
	publish func(rel, state string, err error)
}

// apply configures lo (with loopback set) and every interface of want
// that changed since the last apply; an interface that fails is tried
// again at the next apply.
func (s *netSet) apply(want []rtnl.Interface) error {
	if s.applied == nil {
		s.applied = map[string]rtnl.Interface{}
	}
	if s.loopback {
		want = append([]rtnl.Interface{{Name: "lo"}}, want...)
	}
	if len(want) == 0 {
		return nil
	}
	c, err := rtnl.Open()
	if err != nil {
		return err
	}
	defer c.Close()
	var errs []error
	for _, i := range want {
		if old, ok := s.applied[i.Name]; ok && old == i {
			continue
		}
		err := s.configure(c, i)
		if i.Name != "lo" && s.publish != nil {
			state := "up"
			if err != nil {
				state = "error"
			}
			s.publish("net/"+i.Name, state, err)
		}
		if err != nil {
			errs = append(errs, err)
			delete(s.applied, i.Name)
			continue
		}
		s.applied[i.Name] = i
	}
	return errors.Join(errs...)
}

// adopt records want (and lo) as applied, by the PID 1 this one
// succeeds: the next apply touches only what changed since.
func (s *netSet) adopt(want []rtnl.Interface) {
	s.applied = map[string]rtnl.Interface{}
	if s.loopback {
		s.applied["lo"] = rtnl.Interface{Name: "lo"}
	}
	for _, i := range want {
		s.applied[i.Name] = i
	}
}

// configure waits for interface i to exist (linkWait at most), then
// configures it.
func (s *netSet) configure(c *rtnl.Conn, i rtnl.Interface) error {
	deadline := time.Now().Add(s.linkWait)
	for {
		ifc, err := net.InterfaceByName(i.Name)
		if err == nil {
			return c.Configure(ifc.Index, i)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w", i.Name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
