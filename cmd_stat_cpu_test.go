package main

import (
	"bytes"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"blkdom/blkback"
	"blkdom/xensim/testbed"
)

// blkdom stat prints the CPU time a backend published, after a blank line.
func TestStatCPU(t *testing.T) {
	bed, err := testbed.New(t.TempDir(), blkback.Options{StatsInterval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer bed.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var out bytes.Buffer
		if err := printCPU(&out, bed.Dom0, -1); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
		if len(lines) == 3 && lines[0] == "" {
			if h := strings.Fields(lines[1]); strings.Join(h, " ") != "backend cpu_user_s cpu_sys_s" {
				t.Fatalf("header %q", lines[1])
			}
			f := strings.Fields(lines[2])
			user, err1 := strconv.ParseFloat(f[1], 64)
			sys, err2 := strconv.ParseFloat(f[2], 64)
			if len(f) != 3 || f[0] != "0" || err1 != nil || err2 != nil || user+sys <= 0 {
				t.Fatalf("CPU line %q", lines[2])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("blkdom stat's CPU part:\n%q", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	var out bytes.Buffer
	if err := printCPU(&out, bed.Dom0, 7); err != nil || out.Len() != 0 {
		t.Errorf("CPU of a domain without blkdom: %q, %v", out.String(), err)
	}
}
