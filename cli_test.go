package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every command line a person may type gets the conventional answer: help
// on stdout and exit 0, or one line on stderr and exit 2 for a usage
// error, before anything touches Xen or a file.
func TestCommandLine(t *testing.T) {
	existing := filepath.Join(t.TempDir(), "mine.img")
	if err := os.WriteFile(existing, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	type cliCase struct {
		args []string
		code int
		// out is the start of stdout for exit 0, or all of stderr
		// (one line) otherwise.
		out string
	}
	tests := []cliCase{
		{nil, 2, "usage: blkdom COMMAND [flags] (\"blkdom help\" lists the commands)\n"},
		{[]string{"-h"}, 0, "usage: blkdom COMMAND [flags]\n"},
		{[]string{"--help"}, 0, "usage: blkdom COMMAND [flags]\n"},
		{[]string{"help"}, 0, "usage: blkdom COMMAND [flags]\n"},
		{[]string{"--version"}, 0, "blkdom dev\n"},
		{[]string{"version"}, 0, "blkdom dev\n"},
		{[]string{"bogus"}, 2, "blkdom: unknown command \"bogus\" (\"blkdom help\" lists them)\n"},
		{[]string{"help", "serve"}, 0, "usage: blkdom serve [flags]\n\nServe the vbds"},
		{[]string{"help", "poweroff"}, 0, "usage: blkdom poweroff\n"},
		{[]string{"help", "bogus"}, 2, "blkdom help: unknown command \"bogus\"\n"},
		{[]string{"help", "serve", "stat"}, 2, "blkdom help: unexpected argument \"stat\"\n"},
		{[]string{"version", "now"}, 2, "blkdom version: unexpected argument \"now\"\n"},
		{[]string{"serve", "-workers", "-3"}, 2, "blkdom serve: -workers -3: want at least 1\n"},
		{[]string{"serve", "-workers", "0"}, 2, "blkdom serve: -workers 0: want at least 1\n"},
		{[]string{"serve", "-workers", "many"}, 2, "blkdom serve: invalid value \"many\" for flag -workers: parse error\n"},
		{[]string{"serve", "-cache", "bogus"}, 2, "blkdom serve: -cache: unknown cache policy \"bogus\" (want auto, direct, buffered or grant-copy)\n"},
		{[]string{"serve", "-nope"}, 2, "blkdom serve: flag provided but not defined: -nope\n"},
		{[]string{"serve", "xvda"}, 2, "blkdom serve: unexpected argument \"xvda\"\n"},
		{[]string{"stat", "-watch", "-1s"}, 2, "blkdom stat: -watch -1s: want a positive interval, or 0 for once\n"},
		{[]string{"stat", "-backend", "-2"}, 2, "blkdom stat: -backend -2: want a domain id\n"},
		{[]string{"demo", "-depth", "0"}, 2, "blkdom demo: -depth 0: want at least 1\n"},
		{[]string{"demo", "-duration", "0"}, 2, "blkdom demo: -duration 0s: want a positive duration\n"},
		{[]string{"demo", "-size", "8G"}, 2, "blkdom demo: -size 8G: want a multiple of 512 up to 1G\n"},
		{[]string{"demo", "-size", "1000"}, 2, "blkdom demo: -size 1000: want a multiple of 512 up to 1G\n"},
		{[]string{"demo", "-size", "lots"}, 2, "blkdom demo: invalid value \"lots\" for flag -size: want bytes, or a number with a K, M or G suffix\n"},
		{[]string{"demo", "-image", existing}, 2, "blkdom demo: -image " + existing + " exists: the demo writes over it (add -overwrite)\n"},
		{[]string{"demo", "-image", "/dev/null", "-overwrite"}, 2, "blkdom demo: -image /dev/null: not a regular file\n"},
		{[]string{"initramfs"}, 2, "blkdom initramfs: -modules and -output are required\n"},
		{[]string{"initramfs", "-modules", "m", "-output", "o", "-file", "x"}, 2, "blkdom initramfs: -file \"x\": want SRC:DST\n"},
	}
	// Every command's -h and --help.
	for _, c := range commands {
		want := "usage: blkdom " + c.name
		tests = append(tests, cliCase{[]string{c.name, "-h"}, 0, want}, cliCase{[]string{c.name, "--help"}, 0, want})
	}
	for _, tc := range tests {
		code, stdout, stderr := runBlkdom(t, tc.args...)
		got := stderr
		if tc.code == 0 {
			got = stdout[:min(len(stdout), len(tc.out))]
			if stderr != "" {
				t.Errorf("blkdom %s: stderr %q", strings.Join(tc.args, " "), stderr)
			}
		} else if stdout != "" {
			t.Errorf("blkdom %s: stdout %q", strings.Join(tc.args, " "), stdout)
		}
		if code != tc.code || got != tc.out {
			t.Errorf("blkdom %s: exit %d, %q; want %d, %q", strings.Join(tc.args, " "), code, got, tc.code, tc.out)
		}
	}
	if b, err := os.ReadFile(existing); err != nil || string(b) != "precious" {
		t.Errorf("-image without -overwrite touched the file: %q, %v", b, err)
	}
}

// help lists every command but the kernel's poweroff helper.
func TestHelpHidesPoweroff(t *testing.T) {
	out := blkdom(t, 0, "help")
	for _, c := range commands {
		if listed := strings.Contains(out, "\n  "+c.name+" "); listed == c.hidden {
			t.Errorf("%s listed: %v; help:\n%s", c.name, listed, out)
		}
	}
}

func TestSizeFlag(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		out  string
	}{
		{"0", 0, "0"}, {"512", 512, "512"}, {"1536", 1536, "1536"}, {"2048", 2048, "2K"},
		{"64M", 64 << 20, "64M"}, {"1G", 1 << 30, "1G"}, {"3K", 3 << 10, "3K"}, {"1024M", 1 << 30, "1G"},
	} {
		var s sizeFlag
		if err := s.Set(tc.in); err != nil || int64(s) != tc.want || s.String() != tc.out {
			t.Errorf("%q: %d %q %v; want %d %q", tc.in, int64(s), s.String(), err, tc.want, tc.out)
		}
	}
	for _, in := range []string{"", "K", "-1", "1T", "1.5G", "8k", "9223372036854775807G"} {
		var s sizeFlag
		if err := s.Set(in); err == nil {
			t.Errorf("%q: accepted as %d", in, int64(s))
		}
	}
}
