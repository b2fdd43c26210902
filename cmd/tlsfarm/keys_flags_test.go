package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm"
)

// TestKeysRefusesBadSettings checks that tlsfarm keys refuses, before
// joining anything, each setting it cannot work with, and says why.
func TestKeysRefusesBadSettings(t *testing.T) {
	dir := privateDir(t)
	secret := filepath.Join(dir, "farm.secret")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(0)); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(t.TempDir(), "open")
	os.Mkdir(open, 0o700)
	os.Chmod(open, 0o777)
	base := []string{"-farm", "redis://127.0.0.1:6379/0", "-farm-secret", secret}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no farm", []string{"-farm-secret", secret, "-export", "nginx:" + dir}, "-farm URL is required"},
		{"no store", []string{"-farm", "amqp://127.0.0.1:5672/", "-farm-secret", secret, "-export", "nginx:" + dir}, "needs a transport with a store"},
		{"no secret", []string{"-farm", "redis://127.0.0.1:6379/0", "-export", "nginx:" + dir}, "-farm-secret FILE is required"},
		{"no target", base, "at least one -export"},
		{"rotation under 1s", append([]string{"-ticket-rotation", "500ms", "-export", "nginx:" + dir}, base...), "at least 1s"},
		{"keep 0", append([]string{"-ticket-keep", "0", "-export", "nginx:" + dir}, base...), "want 1 to 16"},
		{"relative path", append([]string{"-export", "nginx:keys"}, base...), "absolute path"},
		{"unknown format", append([]string{"-export", "apache:/x"}, base...), "unknown format"},
		{"world-writable directory", append([]string{"-export", "nginx:" + open}, base...), "group or by other users"},
		{"bad log format", append([]string{"-log-format", "xml", "-export", "nginx:" + dir}, base...), "want text or json"},
		{"missing directory", append([]string{"-export", "file:" + filepath.Join(dir, "nope", "k.json")}, base...), "no such file"},
	}
	for _, tt := range tests {
		var stderr bytes.Buffer
		o, code := parseKeys(tt.args, func(string) string { return "" }, &stderr)
		if o != nil || code == 0 || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("%s: exit %d, stderr %q; want a refusal saying %q", tt.name, code, stderr.String(), tt.want)
		}
	}
}
