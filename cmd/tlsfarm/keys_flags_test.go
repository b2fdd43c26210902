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
	below := filepath.Join(open, "keys") // private, but open can be swapped
	os.Mkdir(below, 0o700)
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
		{"rotation past a year", append([]string{"-ticket-rotation", "2562047h", "-export", "nginx:" + dir}, base...), "at most 8760h"},
		{"on-change timeout past a year", append([]string{"-on-change", "true", "-on-change-timeout", "2562047h", "-export", "nginx:" + dir}, base...), "at most 8760h"},
		{"rotation under 1s", append([]string{"-ticket-rotation", "500ms", "-export", "nginx:" + dir}, base...), "at least 1s"},
		{"keep 0", append([]string{"-ticket-keep", "0", "-export", "nginx:" + dir}, base...), "want 1 to 16"},
		{"relative path", append([]string{"-export", "nginx:keys"}, base...), "absolute path"},
		{"unknown format", append([]string{"-export", "apache:/x"}, base...), "unknown format"},
		{"world-writable directory", append([]string{"-export", "nginx:" + open}, base...), "group or by other users"},
		{"world-writable parent", append([]string{"-export", "nginx:" + below}, base...), open + ", above " + below},
		{"bad log format", append([]string{"-log-format", "xml", "-export", "nginx:" + dir}, base...), "want text or json"},
		{"negative on-change timeout", append([]string{"-on-change", "true", "-on-change-timeout", "-5s", "-export", "nginx:" + dir}, base...), "-on-change-timeout"},
		{"zero on-change timeout", append([]string{"-on-change", "true", "-on-change-timeout", "0", "-export", "nginx:" + dir}, base...), "-on-change-timeout"},
		{"same target twice", append([]string{"-export", "nginx:" + dir, "-export", "file:" + filepath.Join(dir, "k.json"), "-export", "nginx:" + dir + "/"}, base...), "-export nginx:" + dir + " is given twice"},
		{"one file, two formats", append([]string{"-export", "haproxy:" + filepath.Join(dir, "k") + ",socket=/run/haproxy.sock", "-export", "file:" + filepath.Join(dir, "k")}, base...), "write the same file"},
		{"a file among nginx's", append([]string{"-export", "nginx:" + dir, "-export", "file:" + filepath.Join(dir, "ticket-1.key")}, base...), "is an nginx key file of -export nginx:" + dir},
		{"a stale nginx file", append([]string{"-export", "haproxy:" + filepath.Join(dir, "ticket-9.key"), "-export", "nginx:" + dir + "/"}, base...), "is an nginx key file of -export nginx:" + dir},
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

// TestKeysHelpHidesFarmPassword: a farm URL given in $TLSFARM_FARM_URL may
// hold a password; tlsfarm keys -h must not print it as the flag's default.
func TestKeysHelpHidesFarmPassword(t *testing.T) {
	env := map[string]string{"TLSFARM_FARM_URL": "redis://:hunter2-secret@127.0.0.1:6379/0"}
	for _, args := range [][]string{{"-h"}, {"-no-such-flag"}} {
		var stderr bytes.Buffer
		parseKeys(args, func(k string) string { return env[k] }, &stderr)
		if !strings.Contains(stderr.String(), "-farm URL") {
			t.Fatalf("%q: no usage printed: %q", args, stderr.String())
		}
		if strings.Contains(stderr.String(), "hunter2-secret") {
			t.Errorf("tlsfarm keys %q prints the farm URL's password:\n%s", args, stderr.String())
		}
	}
}

// TestKeysFarmURLFromEnvironment: $TLSFARM_FARM_URL still gives the farm
// URL when -farm is not set, and -farm wins over it.
func TestKeysFarmURLFromEnvironment(t *testing.T) {
	dir := privateDir(t)
	secret := filepath.Join(dir, "farm.secret")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(0)); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"TLSFARM_FARM_URL": "redis://127.0.0.1:6379/3"}
	getenv := func(k string) string { return env[k] }
	base := []string{"-farm-secret", secret, "-export", "nginx:" + dir}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{base, "redis://127.0.0.1:6379/3"},
		{append([]string{"-farm", "nats://127.0.0.1:4222"}, base...), "nats://127.0.0.1:4222"},
	} {
		var stderr bytes.Buffer
		o, code := parseKeys(tt.args, getenv, &stderr)
		if o == nil || code != 0 || o.farmURL != tt.want {
			t.Errorf("%q: options %+v, exit %d, stderr %q; want farm %s", tt.args, o, code, stderr.String(), tt.want)
		}
	}
}

// TestKeysHelpNamesTypesAndVariables: tlsfarm keys -h names what each
// setting takes (not "string" for a number or a duration) and every
// environment variable the agent reads.
func TestKeysHelpNamesTypesAndVariables(t *testing.T) {
	var stderr bytes.Buffer
	if o, code := parseKeys([]string{"-h"}, func(string) string { return "" }, &stderr); o != nil || code != 0 {
		t.Fatalf("keys -h: options %+v, exit %d", o, code)
	}
	help := stderr.String()
	for _, want := range []string{
		"-ticket-keep n\n", "-ticket-rotation duration\n",
		"$TLSFARM_LOG_LEVEL", "$TLSFARM_LOG_FORMAT", "$TLSFARM_NODE",
		"$TLSFARM_FARM_URL", "$TLSFARM_FARM_NAME", "$TLSFARM_FARM_SECRET_FILE",
		"$TLSFARM_TICKET_ROTATION", "$TLSFARM_TICKET_KEEP",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("keys -h does not show %q:\n%s", want, help)
		}
	}
	// What the help names, the agent reads.
	env := map[string]string{"TLSFARM_LOG_LEVEL": "debug", "TLSFARM_LOG_FORMAT": "json"}
	dir := privateDir(t)
	secret := filepath.Join(dir, "farm.secret")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(0)); err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	o, code := parseKeys([]string{"-farm", "redis://127.0.0.1:6379/0", "-farm-secret", secret, "-export", "nginx:" + dir},
		func(k string) string { return env[k] }, &stderr)
	if o == nil || code != 0 || o.logLevel != "debug" || o.logFormat != "json" {
		t.Errorf("keys with $TLSFARM_LOG_LEVEL and $TLSFARM_LOG_FORMAT: options %+v, exit %d, stderr %q", o, code, stderr.String())
	}
}

// TestKeysFlagValuesHideFarmPassword: a farm URL given to the wrong flag
// of tlsfarm keys (a value left out shifts the next one in) is refused,
// naming the flag, without its password. The flag package quoted it whole
// for -on-change-timeout and -export ("invalid value ... for flag"), and
// the agent's own refusals of -ticket-rotation, -ticket-keep, -log-level
// and -log-format quoted it too.
func TestKeysFlagValuesHideFarmPassword(t *testing.T) {
	dir := privateDir(t)
	secret := filepath.Join(dir, "farm.secret")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(0)); err != nil {
		t.Fatal(err)
	}
	const url = "redis://:s3cret@127.0.0.1:6379/0"
	base := []string{"-farm", "redis://127.0.0.1:6379/0", "-farm-secret", secret}
	for _, flag := range []string{"-on-change-timeout", "-export", "-ticket-rotation", "-ticket-keep", "-log-level", "-log-format"} {
		args := append([]string{flag, url}, base...)
		if flag != "-export" {
			args = append(args, "-export", "nginx:"+dir)
		}
		var stderr bytes.Buffer
		o, code := parseKeys(args, func(string) string { return "" }, &stderr)
		first, _, _ := strings.Cut(stderr.String(), "\n")
		if o != nil || code == 0 || !strings.Contains(first, flag) {
			t.Errorf("keys %s URL: exit %d, stderr %q; want a refusal naming %s", flag, code, first, flag)
		}
		if strings.Contains(stderr.String(), "s3cret") {
			t.Errorf("keys %s URL shows the password: %q", flag, first)
		}
	}
}
