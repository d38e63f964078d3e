package appliance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"strings"
	"sync"
	"time"
)

// An upgrade in place of a driver domain's blkdom: dom0 writes the path of
// a new binary to blkdom/upgrade (Config.Upgrade); PID 1 copies it to
// upgradeExe on its own tmpfs (so that the running image pins no mount and
// survives an NFS server going away), checks the copy, and hands its path
// to serve (Host.Upgrades), which drains and answers every ring, releases
// them and execs it. The new image is PID 1 again and finds handOverEnv
// set: it keeps what the first one brought up (modules, mounts, network,
// the kernel's stop requests) and its backend adopts every ring.

// handOverEnv is set in PID 1's environment once it has started, so that
// any exec of PID 1 (an upgrade, SIGUSR2) starts as a successor.
const handOverEnv = "BLKDOM_PID1_SUCCESSOR"

// upgradeExe is where PID 1 keeps the binary it upgrades to (the
// machine's upgradeExe; tests use another).
const upgradeExe = "/run/blkdom-upgrade"

// versionWait bounds how long a new binary may take to say its version.
const versionWait = 10 * time.Second

// reapMu keeps reapAll from collecting the exit status of a child that
// checkBinary waits for itself.
var reapMu sync.Mutex

// installBinary copies the binary at src to dst (by a temporary file
// renamed over it: a running dst is not touched), executable, and checks
// the copy: it returns the "blkdom <version>" line the copy prints.
func installBinary(src, dst string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%s is not an executable file (%v)", src, st.Mode())
	}
	tmp := dst + ".new"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return "", err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("copying %s: %w", src, err)
	}
	return checkBinary(dst)
}

// checkBinary runs "exe version" and returns its line, which must begin
// "blkdom ": the binary runs on this kernel and is blkdom.
func checkBinary(exe string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), versionWait)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, exe, "version")
	cmd.Stdout, cmd.Stderr = &out, &out
	reapMu.Lock()
	err := cmd.Run()
	reapMu.Unlock()
	line, _, _ := strings.Cut(out.String(), "\n")
	if len(line) > 200 {
		line = line[:200]
	}
	if err != nil {
		return "", fmt.Errorf("%s version: %w: %q", exe, err, line)
	}
	if !strings.HasPrefix(line, "blkdom ") {
		return "", fmt.Errorf("%s version: %q is not blkdom's answer", exe, line)
	}
	return line, nil
}

// Upgrades delivers the path of a checked binary that serve is to stop
// for (blkback.ErrHandOver) and exec.
func (h *Host) Upgrades() <-chan string { return h.upgrades }

// upgrade runs in its own goroutine when blkdom/upgrade changes to src:
// it installs and checks the binary, publishing each step and any error
// under StatusDir/upgrade, and hands it to serve.
func (m *machine) upgrade(src string) {
	m.publish("upgrade", "checking", nil)
	v, err := installBinary(src, m.upgradeExe)
	if err != nil {
		m.log.Warn("upgrade refused", "binary", src, "err", err)
		m.publish("upgrade", "refused", err)
		return
	}
	if err := m.xs.Write(path.Join(StatusDir, "upgrade/version"), v); err != nil {
		m.log.Warn("publishing state", "what", "upgrade/version", "err", err)
	}
	select {
	case m.upgrades <- m.upgradeExe:
		m.log.Info("upgrading", "binary", src, "version", v)
		m.publish("upgrade", "handing over", nil)
	default:
		err := errors.New("serve is not waiting for one (a hand-over is under way, or serving has not begun)")
		m.log.Warn("upgrade refused", "binary", src, "err", err)
		m.publish("upgrade", "refused", err)
	}
}
