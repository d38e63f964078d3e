package blkback

import (
	"fmt"
	"runtime/debug"
)

// guard runs fn and turns a panic into an error, so that a bug met while
// serving one device disconnects that device instead of taking the whole
// process down, which as a driver domain's PID 1 would panic the kernel.
func guard(fn func()) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("panic: %v\n%s", v, debug.Stack())
		}
	}()
	fn()
	return nil
}
