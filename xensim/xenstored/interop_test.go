package xenstored_test

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"blkdom/xensim/xenstored/xenstoredtest"
	"blkdom/xs"
)

// The Debian xenstore-utils tools (libxenstore 4.17) find the daemon through
// $XENSTORED_PATH, which overrides both the socket and the xenbus device
// path; without it they use $XENSTORED_RUNDIR/socket (default
// /var/run/xenstored/socket) and then /dev/xen/xenbus. They stat the path and
// connect() when it is a socket.

var xenstoreTools = []string{
	"xenstore-write", "xenstore-read", "xenstore-ls", "xenstore-rm", "xenstore-list",
	"xenstore-exists", "xenstore-chmod", "xenstore-watch",
}

// tools starts a server on a socket and returns a runner for the Debian tools
// pointed at it, and a Go client of the same server.
func tools(t *testing.T) (run func(args ...string) (string, error), sock string, c *xs.Client) {
	t.Helper()
	for _, tool := range xenstoreTools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: install Debian's xenstore-utils (apt-get install -y --no-install-recommends xenstore-utils)", tool)
		}
	}
	_, sock, c = xenstoredtest.Start(t)
	run = func(args ...string) (string, error) {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "XENSTORED_PATH="+sock)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	return run, sock, c
}

func TestInteropTools(t *testing.T) {
	run, _, c := tools(t)
	ok := func(args ...string) string {
		t.Helper()
		out, err := run(args...)
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		return out
	}

	// Tools write, Go reads.
	ok("xenstore-write", "/tool/a", "1", "/tool/deep/b", "two words")
	for path, want := range map[string]string{"/tool/a": "1", "/tool/deep/b": "two words", "/tool/deep": ""} {
		if v, err := c.Read(path); err != nil || v != want {
			t.Errorf("Go read %s = %q %v, want %q", path, v, err, want)
		}
	}
	// Go writes, tools read.
	if err := c.Write("/go/x", "hello"); err != nil {
		t.Fatal(err)
	}
	if err := c.Write("/go/y", "world"); err != nil {
		t.Fatal(err)
	}
	if out := ok("xenstore-read", "/go/x", "/go/y"); out != "hello\nworld\n" {
		t.Errorf("xenstore-read: %q", out)
	}
	if out := ok("xenstore-list", "/go"); out != "x\ny\n" {
		t.Errorf("xenstore-list: %q", out)
	}
	if out := ok("xenstore-ls", "-f", "/go"); out != "/go/x = \"hello\"\n/go/y = \"world\"\n" {
		t.Errorf("xenstore-ls -f: %q", out)
	}
	if _, err := run("xenstore-exists", "/go/x"); err != nil {
		t.Errorf("xenstore-exists of a node: %v", err)
	}
	if _, err := run("xenstore-exists", "/go/none"); exitCode(err) != 1 {
		t.Errorf("xenstore-exists of a missing node: %v", err)
	}
	if out, err := run("xenstore-read", "/go/none"); exitCode(err) != 1 {
		t.Errorf("xenstore-read of a missing node: %v %q", err, out)
	}

	// Permissions both ways.
	ok("xenstore-chmod", "/go/x", "n0", "r5")
	if p, err := c.GetPerms("/go/x"); err != nil || !slices.Equal(p, []xs.Perm{{Dom: 0, Access: xs.AccessNone}, {Dom: 5, Access: xs.AccessRead}}) {
		t.Errorf("perms after xenstore-chmod: %v %v", p, err)
	}
	if err := c.SetPerms("/go/y", []xs.Perm{{Dom: 3, Access: xs.AccessBoth}, {Dom: 0, Access: xs.AccessWrite}}); err != nil {
		t.Fatal(err)
	}
	if out := ok("xenstore-ls", "-p", "/go"); !strings.Contains(out, "(n0,r5)") || !strings.Contains(out, "(b3,w0)") {
		t.Errorf("xenstore-ls -p: %q", out)
	}

	// Removal both ways.
	ok("xenstore-rm", "/go/x")
	if _, err := c.Read("/go/x"); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("after xenstore-rm: %v", err)
	}
	if err := c.Rm("/tool"); err != nil {
		t.Fatal(err)
	}
	if _, err := run("xenstore-exists", "/tool/deep/b"); exitCode(err) != 1 {
		t.Errorf("xenstore-exists after Go Rm: %v", err)
	}

	// A directory too big for one reply goes through DIRECTORY_PART.
	var names []string
	if err := c.Transaction(func(tx *xs.Tx) error {
		names = names[:0]
		for i := range 300 {
			name := fmt.Sprintf("entry-with-a-long-name-%04d", i)
			names = append(names, name)
			if err := tx.Write("/many/"+name, ""); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if out := ok("xenstore-list", "/many"); out != strings.Join(names, "\n")+"\n" {
		t.Errorf("xenstore-list of 300 children: %d bytes", len(out))
	}
}

func TestInteropWatch(t *testing.T) {
	_, sock, c := tools(t)
	cmd := exec.Command("xenstore-watch", "-n", "3", "/watched")
	cmd.Env = append(os.Environ(), "XENSTORED_PATH="+sock)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		t.Helper()
		select {
		case l := <-lines:
			return l
		case <-time.After(5 * time.Second):
			t.Fatal("xenstore-watch printed nothing")
			return ""
		}
	}
	if l := next(); l != "/watched" {
		t.Fatalf("first event %q", l)
	}
	if err := c.Write("/watched/child", "1"); err != nil {
		t.Fatal(err)
	}
	if l := next(); l != "/watched/child" {
		t.Fatalf("second event %q", l)
	}
	if err := c.Write("/unrelated", "1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rm("/watched"); err != nil {
		t.Fatal(err)
	}
	if l := next(); l != "/watched" {
		t.Fatalf("third event %q", l)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("xenstore-watch -n 3: %v", err)
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}
