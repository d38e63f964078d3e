package xenstored

import (
	"strconv"
	"syscall"

	"blkdom/xs"
)

// handle executes one request and writes its reply payload into c.out. It
// returns an errno for an ERROR reply, or 0, and for a new watch the event
// to send after the reply. Called with s.mu held.
func (c *conn) handle(h xs.Header, p []byte) (*event, syscall.Errno) {
	s := c.s
	var t *tx
	if h.TxID != 0 {
		if t = c.txs[h.TxID]; t == nil {
			return nil, syscall.ENOENT
		}
	}
	switch h.Op {
	case xs.OpRead, xs.OpDirectory, xs.OpGetPerms, xs.OpMkdir, xs.OpRm:
		var a [1][]byte
		if args(p, a[:]) != nil {
			return nil, syscall.EINVAL
		}
		path, _, ok := c.canonical(a[0])
		if !ok {
			return nil, syscall.EINVAL
		}
		return nil, c.pathOp(h.Op, t, path)
	case xs.OpWrite:
		pa, value, ok := xs.NextArg(p)
		if !ok {
			return nil, syscall.EINVAL
		}
		path, _, ok := c.canonical(pa)
		if !ok {
			return nil, syscall.EINVAL
		}
		return nil, c.write(t, path, value)
	case xs.OpDirectoryPart:
		var a [2][]byte
		if args(p, a[:]) != nil {
			return nil, syscall.EINVAL
		}
		path, _, ok := c.canonical(a[0])
		off, err := strconv.ParseUint(string(a[1]), 10, 31)
		if !ok || err != nil {
			return nil, syscall.EINVAL
		}
		return nil, c.directoryPart(t, path, int(off))
	case xs.OpSetPerms:
		pa, rest, ok := xs.NextArg(p)
		if !ok {
			return nil, syscall.EINVAL
		}
		path, _, ok := c.canonical(pa)
		if !ok || len(rest) == 0 || rest[len(rest)-1] != 0 {
			return nil, syscall.EINVAL
		}
		perms, err := xs.ParsePerms(rest)
		if err != nil {
			return nil, syscall.EINVAL
		}
		return nil, c.setPerms(t, path, perms)
	case xs.OpWatch, xs.OpUnwatch:
		var a [2][]byte
		if args(p, a[:]) != nil {
			return nil, syscall.EINVAL
		}
		w := &watch{token: string(a[1])}
		if len(a[0]) > 0 && a[0][0] == '@' {
			if len(a[0]) > maxPath {
				return nil, syscall.EINVAL
			}
			w.path = string(a[0])
		} else {
			var ok bool
			if w.path, w.rel, ok = c.canonical(a[0]); !ok {
				return nil, syscall.EINVAL
			}
		}
		if h.Op == xs.OpUnwatch {
			return nil, c.unwatch(w)
		}
		return c.watch(w, string(a[0]))
	case xs.OpTransactionStart:
		if t != nil {
			return nil, syscall.EBUSY
		}
		if len(p) != 1 || p[0] != 0 {
			return nil, syscall.EINVAL
		}
		return nil, c.startTx()
	case xs.OpTransactionEnd:
		if t == nil {
			return nil, syscall.ENOENT
		}
		var a [1][]byte
		if args(p, a[:]) != nil {
			return nil, syscall.EINVAL
		}
		var errno syscall.Errno
		switch string(a[0]) {
		case "T":
			errno = s.commit(t)
		case "F":
		default:
			return nil, syscall.EINVAL
		}
		delete(c.txs, t.id)
		if errno == 0 {
			c.out.AddArg("OK")
		}
		return nil, errno
	case xs.OpGetDomainPath:
		var a [1][]byte
		if args(p, a[:]) != nil {
			return nil, syscall.EINVAL
		}
		dom, ok := parseDom(a[0])
		if !ok {
			return nil, syscall.EINVAL
		}
		c.out.AddArg(domainPath(dom))
		return nil, 0
	case xs.OpResetWatches:
		c.watches = nil
		clear(c.txs)
		c.out.AddArg("OK")
		return nil, 0
	case xs.OpIntroduce, xs.OpRelease, xs.OpIsDomainIntroduced, xs.OpResume:
		return nil, c.domainOp(h.Op, p)
	case xs.OpSetTarget:
		if c.dom != 0 {
			return nil, syscall.EACCES
		}
		return nil, syscall.ENOSYS
	}
	return nil, syscall.EINVAL
}

// pathOp executes the one-path operations.
func (c *conn) pathOp(op xs.Op, t *tx, path string) syscall.Errno {
	s := c.s
	switch op {
	case xs.OpRead:
		n, errno := s.lookup(t, c.dom, path, wantRead)
		if errno == 0 {
			c.out.AddBytes(n.value)
		}
		return errno
	case xs.OpDirectory:
		n, errno := s.lookup(t, c.dom, path, wantRead)
		if errno == 0 {
			for _, name := range n.children {
				c.out.AddArg(name)
			}
		}
		return errno
	case xs.OpGetPerms:
		n, errno := s.lookup(t, c.dom, path, wantRead)
		if errno == 0 {
			var b [16]byte
			for _, p := range n.perms {
				c.out.AddBytes(xs.AppendPerm(b[:0], p))
				c.out.AddString("\x00")
			}
		}
		return errno
	case xs.OpMkdir:
		_, errno := s.lookup(t, c.dom, path, wantWrite)
		switch errno {
		case syscall.ENOENT:
			n := s.create(t, c.dom, path, nil)
			s.changed(t, change{path: path, perms: n.perms})
		case 0: // exists: fine
		default:
			return errno
		}
	case xs.OpRm:
		n, errno := s.lookup(t, c.dom, path, wantWrite)
		switch {
		case errno == syscall.ENOENT:
			// A missing node whose parent exists is already removed.
			if pp, _ := parentOf(path); path == "/" || s.get(t, pp) == nil {
				return syscall.ENOENT
			}
		case errno != 0:
			return errno
		case path == "/":
			return syscall.EINVAL
		default:
			s.remove(t, path)
			s.changed(t, change{path: path, removed: true, perms: n.perms})
		}
	}
	c.out.AddArg("OK")
	return 0
}

func (c *conn) write(t *tx, path string, value []byte) syscall.Errno {
	s := c.s
	n, errno := s.lookup(t, c.dom, path, wantWrite)
	v := append([]byte(nil), value...)
	switch errno {
	case syscall.ENOENT:
		n = s.create(t, c.dom, path, v)
	case 0:
		n = n.clone()
		n.value = v
		s.set(t, path, n)
	default:
		return errno
	}
	s.changed(t, change{path: path, perms: n.perms})
	c.out.AddArg("OK")
	return 0
}

// directoryPart answers DIRECTORY_PART: the node's generation, then the
// children names from byte offset off of their NUL-separated list, as many
// whole names as fit; the chunk that reaches the end carries an extra NUL.
func (c *conn) directoryPart(t *tx, path string, off int) syscall.Errno {
	n, errno := c.s.lookup(t, c.dom, path, wantRead)
	if errno != 0 {
		return errno
	}
	c.out.AddUint(n.gen)
	pos := 0
	for _, name := range n.children {
		end := pos + len(name) + 1
		if pos >= off {
			if !c.out.Fits(len(name) + 2) { // keep room for the final NUL
				return 0
			}
			c.out.AddArg(name)
		}
		pos = end
	}
	c.out.AddString("\x00")
	return 0
}

func (c *conn) setPerms(t *tx, path string, perms []xs.Perm) syscall.Errno {
	s := c.s
	n, errno := s.lookup(t, c.dom, path, wantWrite)
	if errno != 0 {
		return errno
	}
	if c.dom != 0 {
		if n.perms[0].Dom != c.dom {
			return syscall.EACCES // only the owner may change permissions
		}
		if perms[0].Dom != c.dom {
			return syscall.EPERM // and it may not give the node away
		}
	}
	n = n.clone()
	n.perms = perms
	s.set(t, path, n)
	s.changed(t, change{path: path, perms: perms})
	c.out.AddArg("OK")
	return 0
}

// watch registers w; arg is the path as the client sent it, which the
// first event reports.
func (c *conn) watch(w *watch, arg string) (*event, syscall.Errno) {
	for _, o := range c.watches {
		if o.path == w.path && o.token == w.token {
			return nil, syscall.EEXIST
		}
	}
	if c.dom != 0 && len(c.watches) >= maxWatches {
		return nil, syscall.E2BIG
	}
	c.watches = append(c.watches, w)
	c.out.AddArg("OK")
	return &event{path: arg, token: w.token}, 0
}

func (c *conn) unwatch(w *watch) syscall.Errno {
	for i, o := range c.watches {
		if o.path == w.path && o.token == w.token {
			c.watches = append(c.watches[:i], c.watches[i+1:]...)
			c.out.AddArg("OK")
			return 0
		}
	}
	return syscall.ENOENT
}

func (c *conn) startTx() syscall.Errno {
	if c.dom != 0 && len(c.txs) >= maxTransactions {
		return syscall.ENOSPC
	}
	s := c.s
	for {
		s.lastTx++
		if _, used := c.txs[s.lastTx]; s.lastTx != 0 && !used {
			break
		}
	}
	t := &tx{
		id:      s.lastTx,
		nodes:   make(map[string]*node),
		seen:    make(map[string]uint64),
		written: make(map[string]struct{}),
	}
	c.txs[t.id] = t
	c.out.AddUint(uint64(t.id))
	return 0
}

// domainOp answers the toolstack's domain operations (dom0 only). Domains
// are only remembered as introduced; INTRODUCE and RELEASE fire the special
// @introduceDomain and @releaseDomain watches.
func (c *conn) domainOp(op xs.Op, p []byte) syscall.Errno {
	if c.dom != 0 {
		return syscall.EACCES
	}
	s := c.s
	first, _, ok := xs.NextArg(p)
	if !ok {
		return syscall.EINVAL
	}
	dom, ok := parseDom(first)
	if !ok {
		return syscall.EINVAL
	}
	switch op {
	case xs.OpIntroduce:
		var a [3][]byte // domid, mfn, event channel
		if args(p, a[:]) != nil || dom == 0 {
			return syscall.EINVAL
		}
		if !s.introduced[dom] {
			s.introduced[dom] = true
			s.fireSpecial("@introduceDomain")
		}
	case xs.OpRelease:
		if dom == 0 {
			return syscall.EINVAL
		}
		if !s.introduced[dom] {
			return syscall.ENOENT
		}
		delete(s.introduced, dom)
		s.fireSpecial("@releaseDomain")
	case xs.OpIsDomainIntroduced:
		if s.introduced[dom] {
			c.out.AddArg("T")
		} else {
			c.out.AddArg("F")
		}
		return 0
	case xs.OpResume:
		if !s.introduced[dom] {
			return syscall.ENOENT
		}
	}
	c.out.AddArg("OK")
	return 0
}
