package probe

import (
	"bytes"
	"os"
	"testing"
	"time"
)

func TestBar(t *testing.T) {
	for _, tc := range []struct {
		name        string
		duration    time.Duration
		done, total int
		want        string
	}{
		{"Start", 0, 0, 200, "\r[..............................]   0%  0/200 \x1b[K"},
		{"Half", 0, 100, 200, "\r[###############...............]  50%  100/200 \x1b[K"},
		{"Done", 0, 200, 200, "\r[##############################] 100%  200/200 \x1b[K"},
		{"ByTime", time.Hour, 7, 0, "\r[..............................]   0%  7  0s/1h0m0s \x1b[K"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			b := &bar{w: &buf, start: time.Now(), duration: tc.duration}
			b.draw(tc.done, tc.total)
			if buf.String() != tc.want {
				t.Errorf("drew %q, want %q", buf.String(), tc.want)
			}
			buf.Reset()
			b.clear()
			if buf.String() != "\r\x1b[K" {
				t.Errorf("clear wrote %q", buf.String())
			}
		})
	}
}

func TestIsTerminal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) {
		t.Error("a regular file counts as a terminal")
	}
	// Any character device counts; drawing on /dev/null is harmless.
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Skip(err)
	}
	defer null.Close()
	if !isTerminal(null) {
		t.Errorf("%s does not count as a terminal", os.DevNull)
	}
}
