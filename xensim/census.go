package xensim

// Census is what a domain holds open in the simulated hypervisor: the
// counts tests compare to show that a backend leaks nothing.
type Census struct {
	GrantHandles, EventHandles int // open gntdev and evtchn handles
	Mappings                   int // live grant mappings through them
	Ports                      int // event channel ports bound or unbound
}

// Census counts what domain d holds open now.
func (d *Domain) Census() Census {
	d.x.mu.Lock()
	defer d.x.mu.Unlock()
	c := Census{GrantHandles: len(d.grantHandles), EventHandles: len(d.eventHandles)}
	for _, g := range d.grantHandles {
		for _, m := range g.maps {
			if m.inUse {
				c.Mappings++
			}
		}
	}
	for _, p := range d.ports {
		if p.state != portFree {
			c.Ports++
		}
	}
	return c
}
