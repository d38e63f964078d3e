// Package evtchn binds and signals Xen event channels.
//
// An event channel is a doorbell between two domains. Device (Linux's
// /dev/xen/evtchn) binds local ports to a remote domain's ports, sends
// notifications, and waits for ports to fire. A fired port stays masked
// until it is unmasked, so a backend drains its ring, then unmasks, then
// re-checks: the kernel never queues more than one pending event per port.
//
// The simulated event channels used by tests and the demo live in package
// xensim and have the same method set.
package evtchn

// Port is an event channel port number, local to one domain.
type Port uint32
