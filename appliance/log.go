package appliance

import (
	"bytes"
	"io"
	"log/slog"
	"strconv"
	"sync"
)

// console is where the appliance logs: first the console the kernel opened
// for init (stderr), then /dev/console once devtmpfs is mounted, with a
// copy of every line in the kernel log (/dev/kmsg) for dmesg.
type console struct {
	mu   sync.Mutex
	out  io.Writer
	kmsg io.Writer // nil until /dev/kmsg is open
	// echo is the kernel's console log level: it prints the kernel log's
	// records of a lower level on the console itself.
	echo int
}

// Kernel log levels (syslog severities) of blkdom's lines, by slog level.
const (
	kmsgErr     = 3
	kmsgWarning = 4
	kmsgDebug   = 7
)

// kmsgLevel is the kernel log level of a line from NewLogger's handler, so
// that "dmesg -l err" finds blkdom's errors. Info lines go in at debug
// level, below the usual console log level, so that the kernel does not
// echo each of them on the console.
func kmsgLevel(line []byte) int {
	switch {
	case bytes.HasPrefix(line, []byte("level=ERROR")):
		return kmsgErr
	case bytes.HasPrefix(line, []byte("level=WARN")):
		return kmsgWarning
	}
	return kmsgDebug
}

// Write writes one log line (slog's handlers write a record at a time),
// prefixed with "blkdom: " so that it stands out among the kernel's: to the
// kernel log as LOG_USER at the line's level, and to the console unless
// the kernel prints that record there itself.
func (c *console) Write(p []byte) (int, error) {
	level := kmsgLevel(p)
	prio := "<" + strconv.Itoa(1<<3|level) + ">" // LOG_USER
	line := append([]byte(prio+"blkdom: "), p...)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.kmsg != nil {
		// One write is one kernel log record; a failure (rate limit,
		// oversized line) must not cost the console its copy.
		if _, err := c.kmsg.Write(line); err == nil && level < c.echo {
			return len(p), nil
		}
	}
	if _, err := c.out.Write(line[len(prio):]); err != nil {
		return 0, err
	}
	return len(p), nil
}

// use switches to new writers; kmsg may be nil. echo is the kernel's
// console log level (0 where unknown: the console gets every line).
func (c *console) use(out, kmsg io.Writer, echo int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out, c.kmsg, c.echo = out, kmsg, echo
}

// NewLogger returns blkdom's logger, for PID 1 and the commands alike:
// "level=INFO msg=..." lines on w at level, without time stamps (the
// console has none to agree with, the kernel log and journald stamp their
// own).
func NewLogger(w io.Writer, level slog.Leveler) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
}
