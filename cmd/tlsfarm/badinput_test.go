package main

import (
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm"
)

// TestBadInputExitsWithOneClearLine starts tlsfarm serve with each kind of
// bad input: it must not start, exit non-zero, and say on one line what is
// wrong and with which setting.
func TestBadInputExitsWithOneClearLine(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key, _ := writeCert(t, dir, "c", "localhost")
	short := writeFile(t, filepath.Join(dir, "short.secret"), "0:"+base64.StdEncoding.EncodeToString(make([]byte, 20))+"\n", 0o600)
	open := writeFile(t, filepath.Join(dir, "open.secret"), "0:"+base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n", 0o644)
	good := filepath.Join(dir, "good.secret")
	if err := farm.WriteSecretFile(good, farm.NewSecret(0)); err != nil {
		t.Fatal(err)
	}
	yaml := func(name, content string) string { return writeFile(t, filepath.Join(dir, name), content, 0o644) }
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() }) // after the parallel subtests, unlike defer

	tests := []struct {
		name string
		args []string
		env  []string
		want []string
	}{
		{"missing certificate", []string{"-cert", filepath.Join(dir, "nope.pem"), "-key", key},
			nil, []string{"listeners[0].certificates[0].cert (flag -cert)", "no such file or directory"}},
		{"unreadable certificate", []string{"-cert", dir, "-key", key},
			nil, []string{"listeners[0].certificates[0].cert", "is a directory"}},
		{"certificate without its key", []string{"-config", yaml("nokey.yaml", "listeners:\n  - certificates:\n      - cert: "+cert+"\n")},
			nil, []string{"listeners[0].certificates[0].key", "is required"}},
		{"malformed YAML", []string{"-config", yaml("bad.yaml", "cache:\n  size: 10\nnode: a: b\n")},
			nil, []string{"line 3", "malformed YAML"}},
		{"unknown setting", []string{"-config", yaml("unknown.yaml", "farm:\n  secret: x\n")},
			nil, []string{"line 2", `unknown setting "farm.secret"`}},
		{"secret file too short", []string{"-farm", "redis://127.0.0.1:1", "-farm-secret", short},
			nil, []string{"farm.secret_file", "20 bytes, need at least 32"}},
		{"secret file readable by others", []string{"-farm", "redis://127.0.0.1:1", "-farm-secret", open},
			nil, []string{"farm.secret_file", "accessible to group or others", "chmod 600"}},
		{"bad duration", nil, []string{"TLSFARM_IDLE_TIMEOUT=forever"},
			[]string{"limits.idle_timeout ($TLSFARM_IDLE_TIMEOUT)", `"forever" is not a duration`}},
		{"bad farm URL", []string{"-farm", "memcached://127.0.0.1:11211", "-farm-secret", good},
			nil, []string{"farm.url", `unsupported scheme "memcached"`}},
		{"bad upstream URL", []string{"-upstream", "htp://127.0.0.1:8080"},
			nil, []string{"listeners[0].upstream", "htp://"}},
		{"address in use", []string{"-listen", busy.Addr().String()},
			nil, []string{"listeners[0].address", "address already in use"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"serve", "-admin", "127.0.0.1:0"}, tt.args...)
			code, stdout, stderr := runCmd(t, args, tt.env...)
			if code == 0 {
				t.Fatalf("exit 0; stderr %q", stderr)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if len(lines) != 1 || stdout != "" {
				t.Errorf("want one line on stderr, got %q (stdout %q)", stderr, stdout)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q lacks %q", stderr, w)
				}
			}
		})
	}
}

func TestUnknownFlagShowsUsage(t *testing.T) {
	t.Parallel()
	code, _, stderr := runCmd(t, []string{"serve", "-no-such-flag"})
	if code != 2 || !strings.Contains(stderr, "-no-such-flag") || !strings.Contains(stderr, "-listen") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

func TestCheckValidatesWithoutServing(t *testing.T) {
	t.Parallel()
	code, out, _ := runCmd(t, []string{"check", "-listen", "127.0.0.1:1", "-admin", "off"})
	if code != 0 || !strings.Contains(out, "configuration OK") {
		t.Errorf("check: %d %q", code, out)
	}
	code, _, errs := runCmd(t, []string{"check", "-cache-mode", "sometimes"})
	if code == 0 || !strings.Contains(errs, "cache.mode") {
		t.Errorf("check of a bad config: %d %q", code, errs)
	}
}

// TestPermissionDeniedCertificate covers an unreadable file where the test
// does not run as root (root reads anything).
func TestPermissionDeniedCertificate(t *testing.T) {
	t.Parallel()
	if os.Geteuid() == 0 {
		t.Skip("root can read a mode-000 file; the directory case above covers unreadable certificates")
	}
	dir := t.TempDir()
	cert, key, _ := writeCert(t, dir, "c", "localhost")
	os.Chmod(cert, 0)
	code, _, stderr := runCmd(t, []string{"serve", "-cert", cert, "-key", key})
	if code == 0 || !strings.Contains(stderr, "permission denied") {
		t.Errorf("exit %d: %s", code, fmt.Sprint(stderr))
	}
}
