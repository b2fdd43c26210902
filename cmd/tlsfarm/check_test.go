package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm"
)

// TestCheckRefusesWhatServeRefuses runs check and serve on configurations
// that serve refuses: check fails on each, naming the same setting.
func TestCheckRefusesWhatServeRefuses(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	inUse := busy.Addr().String()
	free := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	secret := filepath.Join(t.TempDir(), "farm.key")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(1)); err != nil {
		t.Fatal(err)
	}
	amqp := []string{"-farm", "amqp://guest:guest@127.0.0.1:1/", "-farm-secret", secret}
	for _, tt := range []struct {
		name string
		args []string
		want string // in both refusals
	}{
		{"listen address in use", []string{"-listen", inUse, "-admin", "off"}, "listeners[0].address"},
		{"admin address in use", []string{"-listen", free(), "-admin", inUse}, "admin.address"},
		{"PROXY protocol without trusted ranges", []string{"-listen", free(), "-admin", "off", "-proxy-protocol"}, "proxy_protocol.trusted"},
		{"store-only without a store", append([]string{"-listen", free(), "-admin", "off", "-farm-mode", "store-only"}, amqp...), "farm.mode"},
		{"write-through without a store", append([]string{"-listen", free(), "-admin", "off", "-write-through"}, amqp...), "farm.write_through"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCmd(t, append([]string{"check"}, tt.args...))
			if code == 0 || !strings.Contains(stderr, tt.want) {
				t.Errorf("check: exit %d, stderr %q; want a refusal naming %s", code, stderr, tt.want)
			}
			code, _, stderr = runCmd(t, append([]string{"serve"}, tt.args...))
			if code == 0 || !strings.Contains(stderr, tt.want) {
				t.Errorf("serve: exit %d, stderr %q; want a refusal naming %s", code, stderr, tt.want)
			}
		})
	}

	// Before a reload the running daemon holds its addresses: -reload
	// does not bind them.
	if code, _, stderr := runCmd(t, []string{"check", "-reload", "-listen", inUse, "-admin", "off"}); code != 0 {
		t.Errorf("check -reload on the running daemon's address: exit %d: %s", code, stderr)
	}
	// What serve warns about, check says too (and passes).
	code, _, stderr := runCmd(t, append([]string{"check", "-listen", free(), "-admin", "off", "-cache-mode", "stateless"}, amqp...))
	if code != 0 || !strings.Contains(stderr, "warning: cache.mode stateless with the amqp farm transport") {
		t.Errorf("check of stateless + amqp: exit %d, stderr %q; want a warning", code, stderr)
	}
}

// TestCheckReloadFlag: check's help shows -reload, and a -reload given
// after other flags is refused with a line that says where it goes, not
// called an undefined flag.
func TestCheckReloadFlag(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		args []string
		code int
		want string // in stderr
	}{
		{"help", []string{"-h"}, 0, "Usage: tlsfarm check [-reload] [flags]"},
		{"reload last", []string{"-listen", "127.0.0.1:0", "-admin", "off", "-reload"}, 2, "-reload must come first"},
		{"reload in the middle", []string{"-admin", "off", "--reload", "-listen", "127.0.0.1:0"}, 2, "--reload must come first"},
	} {
		var stdout, stderr bytes.Buffer
		code := check(tt.args, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stderr.String(), tt.want) || strings.Contains(stderr.String(), "not defined") {
			t.Errorf("%s: check %q: exit %d, stderr %q; want exit %d saying %q", tt.name, tt.args, code, stderr.String(), tt.code, tt.want)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := check([]string{"-reload", "-listen", "127.0.0.1:0", "-admin", "off"}, &stdout, &stderr); code != 0 {
		t.Errorf("check -reload first: exit %d, stderr %q", code, stderr.String())
	}
}

// TestCheckReloadFlagValue: -reload is a boolean flag in check's help, and
// -reload=true or -reload=false, as Go's flags take booleans, must work as
// the first argument (=true skips binding the addresses the running daemon
// holds; =false binds them) and be refused elsewhere as a bare -reload is,
// not called an undefined flag.
func TestCheckReloadFlagValue(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	inUse := busy.Addr().String()
	for _, tt := range []struct {
		args []string
		code int
		want string // in stderr
	}{
		{[]string{"-reload=true", "-listen", inUse, "-admin", "off"}, 0, ""},
		{[]string{"--reload=1", "-listen", inUse, "-admin", "off"}, 0, ""},
		{[]string{"-reload=false", "-listen", inUse, "-admin", "off"}, 1, "listeners[0].address"},
		{[]string{"-reload=maybe", "-listen", inUse, "-admin", "off"}, 2, "-reload=maybe"},
		{[]string{"-admin", "off", "-reload=true"}, 2, "-reload=true must come first"},
	} {
		var stdout, stderr bytes.Buffer
		code := check(tt.args, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stderr.String(), tt.want) || strings.Contains(stderr.String(), "not defined") {
			first, _, _ := strings.Cut(stderr.String(), "\n")
			t.Errorf("check %q: exit %d, stderr's first line %q; want exit %d saying %q", tt.args, code, first, tt.code, tt.want)
		}
	}
}

// TestCheckRefusesFarmURLsTheTransportRefuses: a Redis, AMQP or NATS farm
// URL whose options the transport refuses when serve opens it (before any
// connection) is refused by check too, without connecting, naming farm.url and keeping the
// password. Before the fix check said "configuration OK" and serve then
// would not start.
func TestCheckRefusesFarmURLsTheTransportRefuses(t *testing.T) {
	t.Parallel()
	secret := filepath.Join(t.TempDir(), "farm.key")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(1)); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, url, want string }{
		{"redis database not a number", "redis://:s3cret@127.0.0.1:1/abc", "invalid database"},
		{"redis unknown option", "redis://:s3cret@127.0.0.1:1/0?bogus=1", "bogus"},
		{"redis echo not a boolean", "redis://:s3cret@127.0.0.1:1/0?echo=maybe", "echo"},
		{"sentinel without master_name", "redis+sentinel://:s3cret@127.0.0.1:1", "master_name"},
		{"reload on a plain redis URL", "redis://:s3cret@127.0.0.1:1/0?reload=2s", "reload"},
		{"amqp unknown option", "amqp://guest:s3cret@127.0.0.1:1/?bogus=1", "bogus"},
		{"amqp heartbeat not a number", "amqp://guest:s3cret@127.0.0.1:1/?heartbeat=x", "heartbeat"},
		// NATS's Open connects, so check reads the URL with
		// natsbus.CheckURL; before, any NATS URL passed check.
		{"nats unknown option", "nats://s3cret@127.0.0.1:1?bogus=1", "bogus"},
		{"nats replicas out of range", "nats://u:s3cret@127.0.0.1:1?replicas=9", "replicas"},
		{"nats pending_msgs zero", "nats://127.0.0.1:2,nats://u:s3cret@127.0.0.1:1?pending_msgs=0", "pending_msgs"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"-listen", "127.0.0.1:0", "-admin", "off", "-farm", tt.url, "-farm-secret", secret, "-farm-name", "revconfig-check"}
			for _, cmd := range []string{"serve", "check"} {
				code, stdout, stderr := runCmd(t, append([]string{cmd}, args...))
				if code != 1 || !strings.Contains(stderr, "farm.url") || !strings.Contains(stderr, tt.want) {
					t.Errorf("%s: exit %d, stdout %q, stderr %q; want a refusal of farm.url about %s", cmd, code, stdout, stderr, tt.want)
				}
				if strings.Contains(stdout+stderr, "s3cret") {
					t.Errorf("%s shows the password: %s", cmd, stdout+stderr)
				}
			}
		})
	}
}

// TestCheckHoldsEveryAddressAtOnce: check refuses what serve cannot bind
// because it binds it itself: the UDP port of an HTTP/3 listener, two
// listeners that overlap (0.0.0.0:P and 127.0.0.1:P), and the admin API
// on a listener's address. check bound each TCP address alone and
// released it at once, and no UDP port, so it said "configuration OK" to
// each of these, and serve then failed to start.
func TestCheckHoldsEveryAddressAtOnce(t *testing.T) {
	t.Parallel()
	free := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	// Each case picks its addresses anew for every attempt: a TCP port
	// found free may be taken by another test's process before check
	// binds it (a CI run: "listeners[0].address: cannot listen on ...:
	// address already in use" where the UDP port was to be refused).
	for _, tt := range []struct {
		name string
		// setup returns check's arguments and what its refusal must say.
		setup func(t *testing.T) (args []string, want string)
	}{
		{"HTTP/3 UDP port taken", func(t *testing.T) ([]string, string) {
			udp, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { udp.Close() })
			taken := udp.LocalAddr().String()
			return []string{"-listen", taken, "-admin", "off", "-http3"}, "listeners[0].http3: cannot listen on UDP " + taken
		}},
		{"overlapping listeners", func(t *testing.T) ([]string, string) {
			_, port, _ := net.SplitHostPort(free())
			overlap := writeFile(t, filepath.Join(t.TempDir(), "overlap.yaml"),
				"admin:\n  address: off\nlisteners:\n  - address: 0.0.0.0:"+port+"\n  - address: 127.0.0.1:"+port+"\n", 0o600)
			return []string{"-config", overlap}, "listeners[1].address: cannot listen on 127.0.0.1:" + port
		}},
		{"admin on a listener's address", func(t *testing.T) ([]string, string) {
			same := free()
			return []string{"-listen", same, "-admin", same}, "admin.address"
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for attempt := 1; ; attempt++ {
				args, want := tt.setup(t)
				code, _, stderr := runCmd(t, append([]string{"check"}, args...))
				if attempt < 3 && code == 1 && strings.Contains(stderr, "listeners[0].address: cannot listen on") && !strings.Contains(want, "listeners[0].address") {
					t.Logf("attempt %d: a port meant to be free was taken meanwhile (%q); again", attempt, strings.TrimSpace(stderr))
					continue
				}
				if code != 1 || !strings.Contains(stderr, want) {
					t.Errorf("check: exit %d, stderr %q; want a refusal saying %q", code, stderr, want)
				}
				code, _, stderr = runCmd(t, append([]string{"serve", "-log-format", "json"}, args...))
				if code == 0 {
					t.Errorf("serve: exit 0, stderr %q; want a refusal", stderr)
				}
				return
			}
		})
	}
}

// TestCheckWarnsOfSecretsInAWorldReadableFile: a configuration file that
// gives a secret (a farm URL's password, the admin token) and that every
// user may read is named in a warning, by check and at serve's start,
// which shows neither secret. A file readable by its group (the daemon's)
// or holding no secret draws none. Before, nothing said so, although the
// farm secret and token files are refused for less.
func TestCheckWarnsOfSecretsInAWorldReadableFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	secret := filepath.Join(dir, "farm.key")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(1)); err != nil {
		t.Fatal(err)
	}
	base := "admin:\n  address: off\nlisteners:\n  - address: 127.0.0.1:0\n"
	withURL := base + "farm:\n  url: redis://:s3cretpw@127.0.0.1:1/0\n  secret_file: " + secret + "\n  name: revcmd-secrets\n"
	withToken := "admin:\n  address: off\n  token: s3cret-admin-token-0123456789\nlisteners:\n  - address: 127.0.0.1:0\n"
	const warning = "gives a secret"
	for _, tt := range []struct {
		name, content string
		mode          os.FileMode
		want          string // in the warning; "" for none
	}{
		{"URL password, world-readable", withURL, 0o644, "(farm.url) and every user may read it (mode 0644)"},
		{"token, world-readable", withToken, 0o604, "(admin.token) and every user may read it (mode 0604)"},
		{"URL password, group-readable", withURL, 0o640, ""},
		{"no secret, world-readable", base, 0o644, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conf := writeFile(t, filepath.Join(t.TempDir(), "tlsfarm.yaml"), tt.content, tt.mode)
			code, stdout, stderr := runCmd(t, []string{"check", "-config", conf})
			if code != 0 {
				t.Fatalf("check: exit %d: %s", code, stderr)
			}
			if strings.Contains(stdout+stderr, "s3cret") {
				t.Errorf("check shows a secret: %s", stdout+stderr)
			}
			if tt.want == "" {
				if strings.Contains(stderr, warning) {
					t.Errorf("a warning where none is due: %s", stderr)
				}
				return
			}
			if !strings.Contains(stderr, "tlsfarm: warning: config file "+conf+" "+warning+" "+tt.want) {
				t.Errorf("check's stderr %q lacks the warning %q", stderr, tt.want)
			}
		})
	}
}

// TestStrayArgumentExits2: an argument that is not a flag (most likely a
// farm URL whose -farm was left out) is a command line error, exit 2 with
// the usage, as every other command line error of serve and check and a
// stray argument of keys, keygen and farmsim; it is shown with its
// password masked. Before, serve and check exited 1, the status of a bad
// configuration.
func TestStrayArgumentExits2(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"serve", "check"} {
		code, stdout, stderr := runCmd(t, []string{cmd, "-admin", "off", "redis://:s3cret@127.0.0.1:1/0"})
		if code != 2 || !strings.Contains(stderr, `unexpected argument "redis://xxxxx@127.0.0.1:1/0"`) || !strings.Contains(stderr, "Usage: tlsfarm "+cmd) {
			t.Errorf("%s with a stray URL: exit %d, stderr %q; want exit 2 with the argument masked and the usage", cmd, code, stderr)
		}
		if strings.Contains(stdout+stderr, "s3cret") {
			t.Errorf("%s shows the password: %s", cmd, stdout+stderr)
		}
	}
}

// TestKeygenStrayArgumentMasked: keygen's refusal of a stray argument
// shows a URL in it with its password masked, as every other command's.
func TestKeygenStrayArgumentMasked(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	code := keygen([]string{"-out", filepath.Join(t.TempDir(), "s"), "redis://:s3cret@127.0.0.1:1/0"}, &stdout, &stderr)
	if code != 2 || strings.Contains(stderr.String(), "s3cret") || !strings.Contains(stderr.String(), "redis://xxxxx@127.0.0.1:1/0") {
		t.Errorf("keygen with a stray URL: exit %d, stderr %q", code, stderr.String())
	}
}
