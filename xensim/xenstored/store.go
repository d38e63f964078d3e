package xenstored

import (
	"strconv"
	"strings"
	"syscall"

	"blkdom/xs"
)

// node is one xenstore node. Nodes in the store are never modified in place:
// a change stores a modified copy, so a transaction can keep the nodes it has
// seen as its snapshot.
type node struct {
	value    []byte
	perms    []xs.Perm // never empty; perms[0] is the owner
	children []string  // names, in creation order
	gen      uint64    // store generation of the node's last change (never 0)
}

func (n *node) clone() *node {
	c := *n
	c.children = append([]string(nil), n.children...)
	return &c
}

// genOf returns n's generation, 0 for an absent node.
func genOf(n *node) uint64 {
	if n == nil {
		return 0
	}
	return n.gen
}

// tx is an open transaction: the nodes it has read or written (a snapshot,
// nil for absent or removed), the store generation of each as first seen,
// which of them it wrote, and the watch events to fire at commit.
type tx struct {
	id      uint32
	nodes   map[string]*node
	seen    map[string]uint64
	written map[string]struct{}
	changes []change
}

// change is a watch trigger: path changed; removed means the subtree at path
// is gone (so watches below path fire too); perms decide who may hear of it.
type change struct {
	path    string
	removed bool
	perms   []xs.Perm
}

// maxPath bounds an absolute path (XENSTORE_ABS_PATH_MAX).
const maxPath = 3072

// validPath reports whether p is a well-formed absolute node path:
// characters of [A-Za-z0-9_@/-], no empty component, no trailing slash.
func validPath(p string) bool {
	if len(p) == 0 || len(p) > maxPath || p[0] != '/' {
		return false
	}
	if p == "/" {
		return true
	}
	if p[len(p)-1] == '/' || strings.Contains(p, "//") {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '-' || c == '/' || c == '_' || c == '@') {
			return false
		}
	}
	return true
}

// parentOf returns the parent path and the last component of a valid path
// other than "/".
func parentOf(p string) (string, string) {
	i := strings.LastIndexByte(p, '/')
	if i == 0 {
		return "/", p[1:]
	}
	return p[:i], p[i+1:]
}

// isBelow reports whether p is at or below dir.
func isBelow(p, dir string) bool {
	if dir == "/" {
		return strings.HasPrefix(p, "/")
	}
	return p == dir || strings.HasPrefix(p, dir) && p[len(dir)] == '/'
}

func domainPath(dom uint32) string {
	return "/local/domain/" + strconv.FormatUint(uint64(dom), 10)
}

// access returns what domain dom may do to a node with perms (xenstored's
// perm_for_conn): dom0 and the owner everything, a listed domain its entry,
// anyone else the owner entry's default.
func access(dom uint32, perms []xs.Perm) xs.Access {
	if dom == 0 || perms[0].Dom == dom {
		return xs.AccessBoth
	}
	for _, p := range perms[1:] {
		if p.Dom == dom {
			return p.Access
		}
	}
	return perms[0].Access
}

// want is the access an operation needs.
type want int

const (
	wantRead want = iota
	wantWrite
)

func allowed(a xs.Access, w want) bool {
	if w == wantWrite {
		return a.CanWrite()
	}
	return a.CanRead()
}

// get returns the node at path as seen by t (the live store when t is nil),
// recording it in t's snapshot.
func (s *Server) get(t *tx, path string) *node {
	if t == nil {
		return s.nodes[path]
	}
	if n, ok := t.nodes[path]; ok {
		return n
	}
	n := s.nodes[path]
	t.nodes[path] = n
	t.seen[path] = genOf(n)
	return n
}

// set stores n at path (nil removes it), in t or in the live store.
func (s *Server) set(t *tx, path string, n *node) {
	if t != nil {
		s.get(t, path)
		t.nodes[path] = n
		t.written[path] = struct{}{}
		return
	}
	if n == nil {
		delete(s.nodes, path)
		return
	}
	s.gen++
	n.gen = s.gen
	s.nodes[path] = n
}

// changed fires watches for c now, or at commit inside a transaction.
func (s *Server) changed(t *tx, c change) {
	if t != nil {
		t.changes = append(t.changes, c)
		return
	}
	s.fire(c)
}

// lookup returns the node at path if domain dom has access w to it.
// For a missing node it returns ENOENT, or EACCES when dom may not w the
// nearest existing ancestor (so absence does not leak, as in xenstored).
func (s *Server) lookup(t *tx, dom uint32, path string, w want) (*node, syscall.Errno) {
	if n := s.get(t, path); n != nil {
		if !allowed(access(dom, n.perms), w) {
			return nil, syscall.EACCES
		}
		return n, 0
	}
	for p := path; p != "/"; {
		p, _ = parentOf(p)
		if a := s.get(t, p); a != nil {
			if !allowed(access(dom, a.perms), w) {
				return nil, syscall.EACCES
			}
			break
		}
	}
	return nil, syscall.ENOENT
}

// create makes the node at path with value, and any missing parents. As in
// xenstored, a new node inherits its parent's permissions, and a node made by
// a domain other than dom0 is owned by that domain.
func (s *Server) create(t *tx, dom uint32, path string, value []byte) *node {
	pp, name := parentOf(path)
	parent := s.get(t, pp)
	if parent == nil {
		parent = s.create(t, dom, pp, nil)
	}
	n := &node{value: value, perms: append([]xs.Perm(nil), parent.perms...)}
	if dom != 0 {
		n.perms[0].Dom = dom
	}
	parent = parent.clone()
	parent.children = append(parent.children, name)
	s.set(t, pp, parent)
	s.set(t, path, n)
	return n
}

// remove deletes the subtree at path (not "/") and unlinks it from its parent.
func (s *Server) remove(t *tx, path string) {
	s.removeTree(t, path)
	pp, name := parentOf(path)
	parent := s.get(t, pp).clone()
	for i, c := range parent.children {
		if c == name {
			parent.children = append(parent.children[:i], parent.children[i+1:]...)
			break
		}
	}
	s.set(t, pp, parent)
}

func (s *Server) removeTree(t *tx, path string) {
	n := s.get(t, path)
	if n == nil {
		return
	}
	for _, c := range n.children {
		s.removeTree(t, path+"/"+c)
	}
	s.set(t, path, nil)
}

// commit applies t to the live store, or returns EAGAIN if any node t saw
// has changed since.
func (s *Server) commit(t *tx) syscall.Errno {
	for path, g := range t.seen {
		if genOf(s.nodes[path]) != g {
			return syscall.EAGAIN
		}
	}
	for path := range t.written {
		s.set(nil, path, t.nodes[path])
	}
	for _, c := range t.changes {
		s.fire(c)
	}
	return 0
}
