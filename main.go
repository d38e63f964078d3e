// Command blkdom serves Xen guests' PV disks (the blkif protocol) from
// userspace. It runs as a daemon in any domain with xenstore access
// ("blkdom serve"), or as PID 1 of a minimal storage driver domain booted
// from the initramfs that "blkdom initramfs" writes.
//
// Every command follows one convention: -h or --help prints its usage on
// stdout and exits 0; a usage error (an unknown flag, a bad value, a stray
// argument) prints one line on stderr and exits 2 before anything touches
// Xen or a file; any other failure prints one line and exits 1.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"blkdom/appliance"
)

// version is set by build.sh from git.
var version = "dev"

// command is one subcommand.
type command struct {
	name    string
	summary string
	// args is the synopsis of its positional arguments; empty when it
	// takes none.
	args string
	// define declares the command's flags on fs and returns what runs
	// once they are parsed; it reads fs.Args() if args is not empty.
	define func(fs *flag.FlagSet) func() error
	// hidden keeps it out of help: poweroff is the kernel's helper.
	hidden bool
}

// commands lists every subcommand; help prints them in this order.
var commands = []*command{
	{name: "serve", summary: "serve the vbds under this domain's backend/vbd (the daemon)", define: serveCmd},
	{name: "stat", summary: "print the statistics of blkdom's vbds, read from xenstore", define: statCmd},
	{name: "demo", summary: "run the backend against a reference frontend on a simulated Xen", define: demoCmd},
	{name: "initramfs", summary: "write the initramfs that boots blkdom as a driver domain", define: initramfsCmd},
	{name: "version", summary: "print the version", define: func(*flag.FlagSet) func() error {
		return func() error { fmt.Println("blkdom", version); return nil }
	}},
	{name: "poweroff", summary: "ask blkdom running as PID 1 to stop in order and power off", hidden: true,
		define: func(*flag.FlagSet) func() error { return appliance.RequestPowerOff }},
}

func init() {
	// help reads the table it is in, so it joins it here.
	commands = append(commands, &command{name: "help", summary: "print this help, or a command's usage",
		args: "[COMMAND]", define: helpCmd})
}

// helpCmd is "blkdom help [COMMAND]".
func helpCmd(fs *flag.FlagSet) func() error {
	return func() error {
		switch fs.NArg() {
		case 0:
			usage(os.Stdout)
			return nil
		case 1:
			c := lookup(fs.Arg(0))
			if c == nil {
				return usageErrorf("unknown command %q", fs.Arg(0))
			}
			fs, _ := c.flagSet(os.Stdout)
			fs.Usage()
			return nil
		}
		return usageErrorf("unexpected argument %q", fs.Arg(1))
	}
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: blkdom COMMAND [flags]")
	fmt.Fprintln(w)
	for _, c := range commands {
		if !c.hidden {
			fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, `"blkdom help COMMAND" or "blkdom COMMAND -h" prints a command's flags; "blkdom --version" the version.`)
}

// flagSet returns the command's flags, its usage printed on w, and what
// runs once they are parsed.
func (c *command) flagSet(w io.Writer) (*flag.FlagSet, func() error) {
	fs := flag.NewFlagSet("blkdom "+c.name, flag.ContinueOnError)
	fs.SetOutput(w)
	fs.Usage = func() {
		out := fs.Output()
		synopsis := "blkdom " + c.name
		nflags := 0
		fs.VisitAll(func(*flag.Flag) { nflags++ })
		if nflags > 0 {
			synopsis += " [flags]"
		}
		if c.args != "" {
			synopsis += " " + c.args
		}
		fmt.Fprintf(out, "usage: %s\n\n%s%s.\n", synopsis, strings.ToUpper(c.summary[:1]), c.summary[1:])
		if nflags > 0 {
			fmt.Fprintln(out, "\nflags:")
			fs.PrintDefaults()
		}
	}
	return fs, c.define(fs)
}

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ error }

func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

func main() {
	if os.Getpid() == 1 {
		runPID1() // never returns
	}
	os.Exit(run(os.Args[1:]))
}

// run runs the command line args (without the program's name) and
// returns the exit status.
func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, `usage: blkdom COMMAND [flags] ("blkdom help" lists the commands)`)
		return 2
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help":
		name = "help"
	case "-version", "--version":
		name = "version"
	}
	c := lookup(name)
	if c == nil {
		fmt.Fprintf(os.Stderr, "blkdom: unknown command %q (\"blkdom help\" lists them)\n", name)
		return 2
	}
	// Parse quietly: a usage error is the one line below, -h the usage
	// on stdout.
	fs, action := c.flagSet(io.Discard)
	err := fs.Parse(args[1:])
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(os.Stdout)
		fs.Usage()
		return 0
	case err != nil:
		err = usageError{err}
	case c.args == "" && fs.NArg() > 0:
		err = usageErrorf("unexpected argument %q", fs.Arg(0))
	default:
		err = action()
	}
	if err == nil {
		return 0
	}
	fmt.Fprintf(os.Stderr, "blkdom %s: %v\n", c.name, err)
	if errors.As(err, new(usageError)) {
		return 2
	}
	return 1
}
