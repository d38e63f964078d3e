package appliance

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// action is how the machine ends.
type action int

const (
	powerOff action = iota
	restart
)

func (a action) String() string {
	if a == restart {
		return "reboot"
	}
	return "power off"
}

// The signal policy of PID 1. SIGTERM and SIGPWR stop in order and power
// off: "xl shutdown" makes the guest kernel run poweroff_cmd, which is
// "blkdom poweroff", which sends SIGTERM. SIGINT stops in order and
// reboots: "xl reboot" makes the kernel call ctrl_alt_del(), which, with
// Ctrl-Alt-Del handling turned off (reboot(LINUX_REBOOT_CMD_CAD_OFF)),
// sends SIGINT to PID 1 instead of restarting at once.
var stopSignals = map[os.Signal]action{
	syscall.SIGTERM: powerOff,
	syscall.SIGPWR:  powerOff,
	syscall.SIGINT:  restart,
}

// notifyStop delivers stop signals to c.
func notifyStop(c chan<- os.Signal) {
	for s := range stopSignals {
		signal.Notify(c, s)
	}
}

// poweroffCmd is the kernel's usermode helper for an orderly power-off.
const poweroffCmd = "/proc/sys/kernel/poweroff_cmd"

// takeStopRequests makes the kernel's stop requests reach PID 1 as
// signals: Ctrl-Alt-Del (and Xen's "reboot") as SIGINT, and the
// poweroff_cmd helper (Xen's "poweroff" and "halt") run exe with the
// argument "poweroff", which signals PID 1 (RequestPowerOff).
func takeStopRequests(exe string) error {
	return errors.Join(
		unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF),
		os.WriteFile(poweroffCmd, []byte(exe+" poweroff\n"), 0o644),
	)
}

// RequestPowerOff asks blkdom running as PID 1 to stop in order and power
// off: it sends SIGTERM to PID 1. It refuses when PID 1 is another
// program, so that "blkdom poweroff" on an ordinary host does nothing.
func RequestPowerOff() error {
	init, err := os.Readlink("/proc/1/exe")
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if filepath.Clean(init) != filepath.Clean(strings.TrimSuffix(self, " (deleted)")) {
		return fmt.Errorf("PID 1 is %s, not this blkdom (%s): not asking it to power off", init, self)
	}
	return unix.Kill(1, unix.SIGTERM)
}

// reapOrphans waits for every child that has exited, each time SIGCHLD
// arrives. PID 1 inherits every orphaned process of the domain and must
// collect its exit status or it stays a zombie. This waits for any child,
// so the one program blkdom as PID 1 starts and waits for itself (a new
// binary's version, checkBinary) runs under reapMu.
func reapOrphans(sigchld <-chan os.Signal) {
	for {
		reapAll()
		<-sigchld
	}
}

// reapAll collects every exited child without blocking.
func reapAll() {
	reapMu.Lock()
	defer reapMu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}

// end syncs the file systems and powers off or reboots. It returns only
// if the kernel refuses; then there is nothing left to do but wait.
func end(a action) error {
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if a == restart {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	return unix.Reboot(cmd)
}
