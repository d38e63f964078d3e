// Command blkdom serves Xen guests' PV disks (the blkif protocol) from
// userspace. It runs as a daemon in any domain with xenstore access
// ("blkdom serve"), or as PID 1 of a minimal storage driver domain booted
// from the initramfs that "blkdom initramfs" writes.
package main

import (
	"fmt"
	"os"
)

// version is set by build.sh from git.
var version = "dev"

// command is one subcommand: its one-line summary and its entry point,
// which receives the arguments after the subcommand's name.
type command struct {
	summary string
	run     func(args []string) error
}

// commands lists every subcommand; help prints them in this order.
var commands = []struct {
	name string
	command
}{
	{"serve", command{"serve the vbds under this domain's backend/vbd (the daemon)", runServe}},
	{"stat", command{"print the statistics of blkdom's vbds, read from xenstore", runStat}},
	{"demo", command{"run the backend against a reference frontend on a simulated Xen", runDemo}},
	{"version", command{"print the version", func([]string) error { fmt.Println("blkdom", version); return nil }}},
	{"initramfs", command{"write the initramfs that boots blkdom as a driver domain", runInitramfs}},
	{"poweroff", command{"ask blkdom running as PID 1 to stop in order and power off", runPoweroff}},
}

func init() {
	// help reads the table it is in, so it joins it here.
	commands = append(commands, struct {
		name string
		command
	}{"help", command{"print this help", func([]string) error { usage(os.Stdout); return nil }}})
}

func usage(w *os.File) {
	fmt.Fprintln(w, "usage: blkdom COMMAND [flags]")
	fmt.Fprintln(w)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run \"blkdom COMMAND -h\" for a command's flags.")
}

func main() {
	if os.Getpid() == 1 {
		runPID1() // never returns
	}
	if len(os.Args) < 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	name := os.Args[1]
	for _, c := range commands {
		if c.name == name {
			if err := c.run(os.Args[2:]); err != nil {
				fmt.Fprintf(os.Stderr, "blkdom %s: %v\n", name, err)
				os.Exit(1)
			}
			return
		}
	}
	fmt.Fprintf(os.Stderr, "blkdom: unknown command %q\n", name)
	usage(os.Stderr)
	os.Exit(2)
}
