package xensim

import (
	"fmt"
	"strconv"

	"blkdom/xs"
)

// This file plays the toolstack's part: what libxl writes into xenstore
// when it creates a domain and attaches a disk, and what it does on
// detach. The backend under test must work with exactly these keys.

// AddDomain creates /local/domain/<id> owned by the domain, with its
// domid and name, as libxl does when it builds a domain.
func AddDomain(c *xs.Client, id uint32, name string) error {
	home := fmt.Sprintf("/local/domain/%d", id)
	return c.Transaction(func(tx *xs.Tx) error {
		for k, v := range map[string]string{"domid": strconv.FormatUint(uint64(id), 10), "name": name} {
			if err := tx.Write(home+"/"+k, v); err != nil {
				return err
			}
		}
		return nil
	})
}

// setOwner gives path to domain owner, readable by readers and nobody
// else; dom0 can always access everything.
func setOwner(tx *xs.Tx, path string, owner uint32, readers ...uint32) error {
	perms := []xs.Perm{{Dom: owner, Access: xs.AccessNone}}
	for _, r := range readers {
		perms = append(perms, xs.Perm{Dom: r, Access: xs.AccessRead})
	}
	return tx.SetPerms(path, perms)
}

// Disk describes a disk the toolstack attaches: xl's
// disk=['backend=...,vdev=...,access=...,target=...'].
type Disk struct {
	Backend  uint32 // the backend's domain
	Frontend uint32 // the guest
	Devid    int    // the virtual device number, e.g. 51712 for xvda
	Params   string // the target: image file or block device path
	ReadOnly bool
	CDROM    bool
	// Extra keys for the backend directory, e.g. "direct-io-safe".
	Extra map[string]string
}

// BackendPath and FrontendPath are the disk's two xenstore directories.
func (d Disk) BackendPath() string {
	return fmt.Sprintf("/local/domain/%d/backend/vbd/%d/%d", d.Backend, d.Frontend, d.Devid)
}

func (d Disk) FrontendPath() string {
	return fmt.Sprintf("/local/domain/%d/device/vbd/%d", d.Frontend, d.Devid)
}

// AddDisk writes both directories of a disk in one transaction, with
// libxl's keys and permissions: each side owns its directory and the
// other side may read it.
func AddDisk(c *xs.Client, d Disk) error {
	mode, devType := "w", "disk"
	if d.ReadOnly {
		mode = "r"
	}
	if d.CDROM {
		devType = "cdrom"
	}
	be, fe := d.BackendPath(), d.FrontendPath()
	back := map[string]string{
		"frontend": fe, "frontend-id": strconv.FormatUint(uint64(d.Frontend), 10),
		"online": "1", "removable": "0", "bootable": "1", "state": "1",
		"dev": "xvda", "type": "phy", "mode": mode, "device-type": devType,
		"discard-enable": "1", "params": d.Params,
	}
	for k, v := range d.Extra {
		back[k] = v
	}
	front := map[string]string{
		"backend": be, "backend-id": strconv.FormatUint(uint64(d.Backend), 10),
		"state": "1", "virtual-device": strconv.Itoa(d.Devid), "device-type": devType,
	}
	// One transaction: the directories with their permissions, then the
	// keys, which inherit them.
	return c.Transaction(func(tx *xs.Tx) error {
		for _, side := range []struct {
			dir           string
			owner, reader uint32
			keys          map[string]string
		}{{be, d.Backend, d.Frontend, back}, {fe, d.Frontend, d.Backend, front}} {
			if err := tx.Mkdir(side.dir); err != nil {
				return err
			}
			if err := setOwner(tx, side.dir, side.owner, side.reader); err != nil {
				return err
			}
			for k, v := range side.keys {
				if err := tx.Write(side.dir+"/"+k, v); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// DetachDisk asks the backend to close, as libxl 4.17 does for xl
// block-detach and xl destroy (libxl__initiate_device_generic_remove): in
// one transaction, online=0 and, unless the backend already reads Closed,
// backend state Closing.
func DetachDisk(c *xs.Client, d Disk) error {
	be := d.BackendPath()
	return c.Transaction(func(tx *xs.Tx) error {
		state, err := tx.Read(be + "/state")
		if err != nil {
			return err
		}
		if err := tx.Write(be+"/online", "0"); err != nil {
			return err
		}
		if state == "6" {
			return nil
		}
		return tx.Write(be+"/state", "5")
	})
}
