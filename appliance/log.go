package appliance

import (
	"io"
	"log/slog"
	"sync"
)

// console is where the appliance logs: first the console the kernel opened
// for init (stderr), then /dev/console once devtmpfs is mounted, with a
// copy of every line in the kernel log (/dev/kmsg) for dmesg.
type console struct {
	mu   sync.Mutex
	out  io.Writer
	kmsg io.Writer // nil until /dev/kmsg is open
}

// kmsgPriority is the syslog priority of blkdom's lines in the kernel
// log: LOG_USER|LOG_DEBUG, below the default console log level, so the
// kernel does not print each line on the console a second time.
const kmsgPriority = "<15>"

// Write writes one log line (slog's handlers write a record at a time),
// prefixed with "blkdom: " so that it stands out among the kernel's.
func (c *console) Write(p []byte) (int, error) {
	line := append([]byte(kmsgPriority+"blkdom: "), p...)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.kmsg != nil {
		// One write is one kernel log record; a failure (rate limit,
		// oversized line) must not cost the console its copy.
		c.kmsg.Write(line)
	}
	if _, err := c.out.Write(line[len(kmsgPriority):]); err != nil {
		return 0, err
	}
	return len(p), nil
}

// use switches to new writers; kmsg may be nil.
func (c *console) use(out, kmsg io.Writer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out, c.kmsg = out, kmsg
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
