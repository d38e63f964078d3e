package blkback

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestBounded(t *testing.T) {
	long := strings.Repeat("A", 3000)
	tests := []struct{ in, want string }{
		{"x86_64-abi", `"x86_64-abi"`},
		{"", `""`},
		{"a\nlevel=ERROR msg=forged", `"a\nlevel=ERROR msg=forged"`},
		{strings.Repeat("B", maxGuestString), `"` + strings.Repeat("B", maxGuestString) + `"`},
		{long, `"` + long[:maxGuestString] + `"...(3000 bytes)`},
	}
	for _, tt := range tests {
		if got := bounded(tt.in); got != tt.want {
			t.Errorf("bounded(%.20q...) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// A device that keeps logging gets logBurst lines, then one per
// logInterval, and the next line that passes says how many were dropped.
func TestLogRateLimit(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1000, 0)
	log := rateLimited(slog.New(slog.NewTextHandler(&buf, nil)), func() time.Time { return now }).With("vbd", "1/51712")
	other := rateLimited(slog.New(slog.NewTextHandler(&buf, nil)), func() time.Time { return now }).With("vbd", "2/51712")
	for i := range 1000 {
		log.Error("connecting", "n", i)
	}
	if n := strings.Count(buf.String(), "\n"); n != logBurst {
		t.Fatalf("%d lines after 1000 messages at once, want %d", n, logBurst)
	}
	other.Info("another device is not silenced")
	if !strings.Contains(buf.String(), "another device") {
		t.Fatal("one device's flood silenced another")
	}
	buf.Reset()
	now = now.Add(3 * logInterval)
	for i := range 10 {
		log.Error("connecting", "n", i)
	}
	want := fmt.Sprintf("level=WARN msg=\"%d messages suppressed\" vbd=1/51712\n", 1000-logBurst)
	lines := strings.SplitAfter(buf.String(), "\n")
	if len(lines) != 3+1+1 || !strings.HasSuffix(lines[0], want) {
		t.Fatalf("after %v: %q, want the suppressed count then 3 lines", 3*logInterval, buf.String())
	}
}
