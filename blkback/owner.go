package blkback

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"blkdom/xs"
)

// ErrOtherBackend is returned by Serve when another backend already serves
// this domain's backend/vbd: another blkdom (its owner token is live) or
// the kernel's xen-blkback. Two backends on one directory fight over every
// device: each closes what the other connects.
var ErrOtherBackend = errors.New("another backend serves this domain's vbds")

// ownerKey, under the domain's home, holds the serving blkdom's owner
// token. It lives in data/, which libxl makes writable by the domain
// itself, so a driver domain can claim it too.
const ownerKey = "data/blkdom-owner"

// kernelBackend is where Linux lists its blkback module while it is
// loaded (or built in): it then serves every vbd under this domain's
// backend/vbd itself.
var kernelBackend = "/sys/module/xen_blkback"

// owner is one process's claim: "pid start boot nonce". The start time
// (in clock ticks since boot, from /proc/<pid>/stat) and the boot id tell
// a live owner from a dead one whose pid was reused; the nonce tells two
// backends in one process apart.
type owner struct {
	pid          int
	start, boot  string
	nonce, token string
}

// self is this process's owner token, with a fresh nonce.
func self() (owner, error) {
	o := owner{pid: os.Getpid()}
	var err error
	if o.start, err = startTime(o.pid); err != nil {
		return o, err
	}
	if o.boot, err = bootID(); err != nil {
		return o, err
	}
	var n [8]byte
	rand.Read(n[:])
	o.nonce = hex.EncodeToString(n[:])
	o.token = fmt.Sprintf("%d %s %s %s", o.pid, o.start, o.boot, o.nonce)
	return o, nil
}

// alive says whether the process that wrote token still runs: same boot,
// and a process with that pid started at that time. A token that does not
// parse is not alive.
func alive(token, boot string) (pid int, ok bool) {
	f := strings.Fields(token)
	if len(f) != 4 || f[2] != boot {
		return 0, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 0 {
		return 0, false
	}
	st, err := startTime(pid)
	return pid, err == nil && st == f[1]
}

// startTime is field 22 of /proc/<pid>/stat, the process's start time.
func startTime(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 20 {
		return "", fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return f[19], nil
}

func bootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b)), err
}

// claim makes this backend the one serving home's backend/vbd, or says who
// already does. A token left by a backend that died (kill -9, a crash) is
// taken over, so a restart works.
func (b *Backend) claim(home string) error {
	if _, err := os.Stat(kernelBackend); err == nil {
		return fmt.Errorf("%w: the kernel's xen-blkback is loaded (%s exists) and serves %s/backend/vbd; unload it first (rmmod xen-blkback)",
			ErrOtherBackend, kernelBackend, home)
	}
	me, err := self()
	if err != nil {
		return fmt.Errorf("owner token: %w", err)
	}
	key := home + "/" + ownerKey
	err = b.xs.Transaction(func(tx *xs.Tx) error {
		cur, err := tx.Read(key)
		switch {
		case errors.Is(err, syscall.ENOENT):
		case err != nil:
			return err
		default:
			if pid, ok := alive(cur, me.boot); ok {
				return fmt.Errorf("%w: process %d serves %s/backend/vbd (owner token %q in %s); stop it first",
					ErrOtherBackend, pid, home, cur, key)
			}
			if cur != "" {
				b.log.Warn("taking over from a backend that is gone", "token", cur)
			}
		}
		return tx.Write(key, me.token)
	})
	if err != nil {
		return err
	}
	b.token = me.token
	return nil
}

// unclaim removes this backend's owner token, if it is still there.
func (b *Backend) unclaim(home string) {
	key := home + "/" + ownerKey
	err := b.xs.Transaction(func(tx *xs.Tx) error {
		if cur, err := tx.Read(key); err != nil || cur != b.token {
			return err
		}
		return tx.Rm(key)
	})
	if err != nil && !errors.Is(err, syscall.ENOENT) {
		b.log.Warn("removing the owner token", "err", err)
	}
}
