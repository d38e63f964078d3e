package blkback

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"
)

// What a guest can make blkdom log is bounded in length and in rate: a
// driver domain's console is small, and a guest that keeps failing must
// not fill it nor drown the other disks' messages.

// maxGuestString is how many bytes of a guest-written value reach the log
// or an error.
const maxGuestString = 128

// bounded renders a guest-written value for the log or an error: quoted
// (control characters and newlines escaped), and cut to maxGuestString
// bytes with a marker that says how long it was.
func bounded(s string) string {
	if len(s) <= maxGuestString {
		return strconv.Quote(s)
	}
	return fmt.Sprintf("%s...(%d bytes)", strconv.Quote(s[:maxGuestString]), len(s))
}

// Each device may log logBurst messages at once, then one per
// logInterval; what goes beyond is counted and reported in one line with
// the next message that passes.
const (
	logBurst    = 20
	logInterval = time.Second
)

// logLimit is one device's token bucket, shared by the handlers derived
// from its logger.
type logLimit struct {
	mu         sync.Mutex
	now        func() time.Time
	tokens     float64
	last       time.Time
	suppressed int
}

// allow takes a token if there is one, and returns how many messages
// were suppressed since the last one allowed.
func (l *logLimit) allow() (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.tokens = min(logBurst, l.tokens+float64(now.Sub(l.last))/float64(logInterval))
	l.last = now
	if l.tokens < 1 {
		l.suppressed++
		return false, 0
	}
	l.tokens--
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}

// limitHandler passes records to h while its device's bucket allows.
type limitHandler struct {
	h     slog.Handler
	limit *logLimit
}

// rateLimited returns log with a fresh token bucket of its own.
func rateLimited(log *slog.Logger, now func() time.Time) *slog.Logger {
	return slog.New(limitHandler{log.Handler(), &logLimit{now: now, tokens: logBurst, last: now()}})
}

func (h limitHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.h.Enabled(ctx, l) }

func (h limitHandler) Handle(ctx context.Context, r slog.Record) error {
	ok, suppressed := h.limit.allow()
	if !ok {
		return nil
	}
	if suppressed > 0 {
		s := slog.NewRecord(r.Time, slog.LevelWarn, fmt.Sprintf("%d messages suppressed", suppressed), 0)
		if err := h.h.Handle(ctx, s); err != nil {
			return err
		}
	}
	return h.h.Handle(ctx, r)
}

func (h limitHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return limitHandler{h.h.WithAttrs(as), h.limit}
}

func (h limitHandler) WithGroup(name string) slog.Handler {
	return limitHandler{h.h.WithGroup(name), h.limit}
}
