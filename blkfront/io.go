package blkfront

import (
	"encoding/binary"
	"errors"
	"fmt"

	"blkdom/blkif"
	"blkdom/gnttab"
)

// MaxTransfer is the most one request moves: eleven granted pages.
const MaxTransfer = blkif.MaxDirectSegments * gnttab.PageSize

// ErrNoResponse is returned when the backend does not answer a request
// within the frontend's timeout.
var ErrNoResponse = errors.New("blkfront: no response from the backend")

// Do submits one request and waits for its status. For reads buf is
// filled, for writes, barriers and flushes it is the data to write (nil
// for a pure flush). len(buf) is a multiple of 512 and at most MaxTransfer;
// each 4 KiB of it travels in its own granted page, granted read-only
// when the backend only needs to read it. Do may be called from many
// goroutines at once: that is how requests pile up in flight.
func (f *Frontend) Do(op uint8, sector uint64, buf []byte) (int16, error) {
	if len(buf)%512 != 0 || len(buf) > MaxTransfer {
		return 0, fmt.Errorf("blkfront: bad transfer length %d", len(buf))
	}
	i := <-f.free
	p := &f.slots[i]
	n := (len(buf) + gnttab.PageSize - 1) / gnttab.PageSize
	var segs [blkif.MaxDirectSegments]blkif.Segment
	readOnly := op != blkif.OpRead
	for s := range n {
		chunk := buf[s*gnttab.PageSize : min(len(buf), (s+1)*gnttab.PageSize)]
		if readOnly {
			copy(p.pages[s].Mem, chunk)
		}
		ref, err := f.dom.Grant(f.beDom, p.pages[s].Frame, readOnly)
		if err != nil {
			f.endGrants(p.refs[:s])
			f.free <- i
			return 0, err
		}
		p.refs[s] = ref
		segs[s] = blkif.Segment{Ref: ref, First: 0, Last: uint8(len(chunk)/512 - 1)}
	}
	f.push(func(slot []byte) { f.abi.PutRequest(slot, op, uint64(i), sector, segs[:n]) })
	st, err := f.wait(p)
	if err != nil {
		return 0, err // the slot stays taken: its grants may still be in use
	}
	if err := f.endGrants(p.refs[:n]); err != nil {
		return st, err
	}
	if op == blkif.OpRead {
		for s := range n {
			copy(buf[s*gnttab.PageSize:min(len(buf), (s+1)*gnttab.PageSize)], p.pages[s].Mem)
		}
	}
	f.free <- i
	return st, nil
}

// Raw lets a test write any bytes into the next request slot, as a
// hostile frontend would; Raw then sets the request id so that it can
// wait for the response, and returns its status.
func (f *Frontend) Raw(fill func(slot []byte)) (int16, error) {
	i := <-f.free
	p := &f.slots[i]
	f.push(func(slot []byte) {
		fill(slot)
		binary.LittleEndian.PutUint64(slot[f.abi.ID:], uint64(i))
	})
	st, err := f.wait(p)
	if err != nil {
		return 0, err
	}
	f.free <- i
	return st, nil
}

// Indexes gives tests the shared ring's header, to publish bogus indexes.
func (f *Frontend) Indexes() *blkif.Indexes { return f.idx }

// ABI is the request layout this frontend writes.
func (f *Frontend) ABI() blkif.ABI { return f.abi }

func (f *Frontend) wait(p *pending) (int16, error) {
	p.timer.Reset(f.opts.Timeout)
	defer p.timer.Stop()
	select {
	case st := <-p.status:
		return st, nil
	case <-p.timer.C:
		return 0, ErrNoResponse
	}
}

// endGrants ends the grants of a finished request. A grant the backend
// still has mapped cannot be ended: that is a backend leak, and an error.
func (f *Frontend) endGrants(refs []gnttab.Ref) error {
	var errs []error
	for _, r := range refs {
		if err := f.dom.EndGrant(r); err != nil {
			errs = append(errs, fmt.Errorf("grant %d: %w", r, err))
		}
	}
	return errors.Join(errs...)
}

// push fills the next request slot and publishes it, notifying the
// backend only if it asked for it (RING_PUSH_REQUESTS_AND_CHECK_NOTIFY).
func (f *Frontend) push(fill func(slot []byte)) {
	f.mu.Lock()
	es := f.abi.EntrySize
	i := int(f.reqProdPvt & (f.size - 1))
	fill(f.entries[i*es : (i+1)*es])
	f.reqProdPvt++
	old, now := f.idx.ReqProd(), f.reqProdPvt
	f.idx.SetReqProd(now)
	notify := now-f.idx.ReqEvent() < now-old
	f.mu.Unlock()
	if notify {
		f.events.Notify(f.port)
	}
}

// responses takes responses off the ring and hands each status to its
// slot, until the event channel closes.
func (f *Frontend) responses() {
	defer f.waiter.Done()
	es := f.abi.EntrySize
	for {
		if _, err := f.events.Wait(); err != nil {
			return
		}
		for {
			for prod := f.idx.RspProd(); f.rspCons != prod; f.rspCons++ {
				i := int(f.rspCons & (f.size - 1))
				id, _, st := blkif.ParseResponse(f.entries[i*es : (i+1)*es])
				if id < uint64(len(f.slots)) {
					select {
					case f.slots[id].status <- st:
					default:
					}
				}
			}
			f.idx.SetRspEvent(f.rspCons + 1)
			if f.idx.RspProd() == f.rspCons {
				break
			}
		}
		f.events.Unmask(f.port)
	}
}

// Notify signals the backend without publishing anything, for tests that
// scribble on the ring's indexes.
func (f *Frontend) Notify() error { return f.events.Notify(f.port) }
