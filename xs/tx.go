package xs

import (
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"syscall"
	"time"
)

// Tx is an open xenstore transaction: its reads see one snapshot and its
// writes become visible together at Commit, or not at all when Commit fails
// with EAGAIN because another commit changed a node this one touched.
// A Tx belongs to the connection it was started on: after a reconnect every
// operation on it fails with EAGAIN.
type Tx struct {
	c     *Client
	id    uint32
	gen   uint64
	ended atomic.Bool
}

// maxTxAttempts bounds Transaction's retries on EAGAIN.
const maxTxAttempts = 32

// maxTxBackoff caps the random pause between Transaction's attempts.
const maxTxBackoff = 64 * time.Millisecond

// StartTransaction opens a transaction.
func (c *Client) StartTransaction() (*Tx, error) {
	cl := getCall()
	defer callPool.Put(cl)
	cl.req.AddString("\x00")
	if err := c.exchange(cl, OpTransactionStart, nil, "", 0); err != nil {
		return nil, err
	}
	id, ok := parseTxID(cl.reply())
	if !ok {
		return nil, &Error{Op: OpTransactionStart, Err: syscall.EIO}
	}
	return &Tx{c: c, id: id, gen: cl.gen}, nil
}

// Transaction runs fn in a transaction and commits it. When fn or the commit
// fails with EAGAIN (a conflicting commit, or a reconnect), the whole
// transaction is redone, up to 32 attempts, after a random pause that grows
// with each conflict (so contending writers do not livelock). When fn fails
// otherwise, the transaction is aborted and fn's error returned. fn must not
// keep tx.
func (c *Client) Transaction(fn func(tx *Tx) error) error {
	var err error
	for attempt := range maxTxAttempts {
		if attempt > 0 {
			limit := min(time.Millisecond<<attempt, maxTxBackoff)
			time.Sleep(rand.N(limit))
		}
		var tx *Tx
		tx, err = c.StartTransaction()
		if err != nil {
			if errors.Is(err, syscall.EAGAIN) {
				continue
			}
			return err
		}
		if err = fn(tx); err != nil {
			tx.Abort()
		} else {
			err = tx.Commit()
		}
		if !errors.Is(err, syscall.EAGAIN) {
			return err
		}
	}
	return err
}

// ID returns the transaction id xenstored assigned.
func (tx *Tx) ID() uint32 { return tx.id }

// live fails operations on a transaction that has ended.
func (tx *Tx) live(op Op, path string) error {
	if tx.ended.Load() {
		return &Error{Op: op, Path: path, Err: syscall.EINVAL}
	}
	return nil
}

// Read is Client.Read inside the transaction.
func (tx *Tx) Read(path string) (string, error) {
	if err := tx.live(OpRead, path); err != nil {
		return "", err
	}
	return tx.c.read1(tx, path)
}

// Write is Client.Write inside the transaction.
func (tx *Tx) Write(path, value string) error {
	if err := tx.live(OpWrite, path); err != nil {
		return err
	}
	return tx.c.write(tx, path, value)
}

// Mkdir is Client.Mkdir inside the transaction.
func (tx *Tx) Mkdir(path string) error {
	if err := tx.live(OpMkdir, path); err != nil {
		return err
	}
	return tx.c.ack(OpMkdir, tx, path, 0)
}

// Rm is Client.Rm inside the transaction.
func (tx *Tx) Rm(path string) error {
	if err := tx.live(OpRm, path); err != nil {
		return err
	}
	return tx.c.ack(OpRm, tx, path, 0)
}

// SetPerms is Client.SetPerms inside the transaction.
func (tx *Tx) SetPerms(path string, perms []Perm) error {
	if err := tx.live(OpSetPerms, path); err != nil {
		return err
	}
	return tx.c.setPerms(tx, path, perms)
}

// Directory is Client.Directory inside the transaction.
func (tx *Tx) Directory(path string) ([]string, error) {
	if err := tx.live(OpDirectory, path); err != nil {
		return nil, err
	}
	return tx.c.directory(tx, path)
}

// Commit ends the transaction, applying its writes. An error wrapping
// syscall.EAGAIN means the transaction must be redone: nothing was applied,
// except in one case no client can tell apart, a reconnect between the
// daemon's commit and its reply (so transactions should be idempotent).
func (tx *Tx) Commit() error { return tx.end("T") }

// Abort ends the transaction, discarding its writes. Aborting a transaction
// that a reconnect already discarded succeeds.
func (tx *Tx) Abort() error {
	err := tx.end("F")
	if errors.Is(err, syscall.EAGAIN) {
		return nil
	}
	return err
}

func (tx *Tx) end(how string) error {
	if tx.ended.Swap(true) {
		return &Error{Op: OpTransactionEnd, Err: syscall.EINVAL}
	}
	cl := getCall()
	defer callPool.Put(cl)
	cl.req.AddArg(how)
	return tx.c.exchange(cl, OpTransactionEnd, tx, "", 0)
}
