package ebpf

import (
	"errors"
	"fmt"
	"os"

	cilium "github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Reason says why the probes could not be loaded.
type Reason int

const (
	// ReasonKernel: the kernel refused the programs for another reason
	// (verifier, missing tracepoint, unexpected kernel layout).
	ReasonKernel Reason = iota
	// ReasonNoBPF: the kernel has no usable bpf(2).
	ReasonNoBPF
	// ReasonNoBTF: the kernel does not describe its types (no
	// /sys/kernel/btf/vmlinux), so the probes cannot find the fields they read.
	ReasonNoBTF
	// ReasonNoKprobes: the grant-table kprobes cannot attach: the kernel has
	// no kprobes or no grant table (not a Xen kernel).
	ReasonNoKprobes
	// ReasonPermission: the process lacks the privilege (CAP_BPF and
	// CAP_PERFMON, or CAP_SYS_ADMIN).
	ReasonPermission
)

var reasonNames = [...]string{
	ReasonKernel:     "kernel refused the probes",
	ReasonNoBPF:      "no BPF support",
	ReasonNoBTF:      "no kernel BTF",
	ReasonNoKprobes:  "no grant-table kprobes",
	ReasonPermission: "not permitted",
}

func (r Reason) String() string {
	if r < 0 || int(r) >= len(reasonNames) {
		return fmt.Sprintf("Reason(%d)", int(r))
	}
	return reasonNames[r]
}

// LoadError is the only kind of error Load returns. A caller logs it once and
// serves without probes: nothing else depends on them.
type LoadError struct {
	Reason Reason
	Err    error
}

func (e *LoadError) Error() string {
	return fmt.Sprintf("ebpf probes unavailable: %v: %v", e.Reason, e.Err)
}

func (e *LoadError) Unwrap() error { return e.Err }

// loadError classifies err, which a step of Load returned. The permission and
// no-BPF cases are recognised whatever the step; otherwise the step's own
// reason applies.
func loadError(step Reason, err error) *LoadError {
	var r Reason
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES), errors.Is(err, os.ErrPermission):
		r = ReasonPermission
	case errors.Is(err, unix.ENOSYS):
		r = ReasonNoBPF
	case step == ReasonNoBTF:
		r = ReasonNoBTF
	case errors.Is(err, cilium.ErrNotSupported) && step != ReasonNoKprobes:
		r = ReasonNoBPF
	default:
		r = step
	}
	return &LoadError{Reason: r, Err: err}
}
