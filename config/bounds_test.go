package config

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm"
)

// TestConfigFileSizeCap: a configuration file far larger than any real
// one (a log named by mistake, a disk image) is refused with an error that
// says so, having read no more than the cap; so is a certificate file. An
// endless device is refused as not a regular file. Before the cap, the
// whole file was read into memory at every start and reload.
func TestConfigFileSizeCap(t *testing.T) {
	dir := t.TempDir()
	huge := filepath.Join(dir, "huge.yaml")
	f, err := os.Create(huge)
	if err != nil {
		t.Fatal(err)
	}
	// Sparse: 64 MiB on paper, nothing on disk. Its first line is a
	// valid setting, so only the size can be at fault.
	if _, err := f.WriteString("node: a\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"config file", []string{"-config", huge}, "config file: " + huge + " is larger than 1 MiB"},
		{"certificate", []string{"-cert", huge, "-key", huge}, "listeners[0].certificates[0].cert (flag -cert): " + huge + " is larger than 1 MiB"},
		{"endless device", []string{"-config", "/dev/zero"}, "/dev/zero is not a regular file"},
	} {
		_, err := Load("serve", tt.args, env(nil), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Load = %v, want an error saying %q", tt.name, err, tt.want)
		}
	}
	// A file just under the cap still loads.
	ok := filepath.Join(dir, "ok.yaml")
	pad := "node: a\n" + strings.Repeat("# padding\n", (maxConfigFile-100)/10)
	if err := os.WriteFile(ok, []byte(pad), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load("serve", []string{"-config", ok}, env(nil), io.Discard); err != nil {
		t.Errorf("a %d-byte file: %v", len(pad), err)
	}
}

// TestDurationUpperBound: a duration past a year is refused, naming the
// setting, whether time.ParseDuration reads it (2562047h, a hair under
// its limit, which overflows once added to a clock) or not (past the
// limit: "too long", not "not a duration").
func TestDurationUpperBound(t *testing.T) {
	for _, tt := range []struct{ flag, value, key string }{
		{"-session-lifetime", "2562047h", "cache.lifetime"},
		{"-max-chain-lifetime", "9000h", "cache.max_chain_lifetime"},
		{"-handshake-timeout", "2562048h", "limits.handshake_timeout"},
		{"-drain-timeout", "99999999999999s", "limits.drain_timeout"},
		{"-ticket-rotation", "8761h", "tickets.rotation_interval"},
	} {
		_, err := Load("serve", []string{tt.flag, tt.value}, env(nil), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.key) || !strings.Contains(err.Error(), "too long (at most 8760h") {
			t.Errorf("%s %s: Load = %v, want %s refused as too long", tt.flag, tt.value, err, tt.key)
		}
	}
	// A year itself is taken.
	if _, err := Load("serve", []string{"-ticket-rotation", "8760h"}, env(nil), io.Discard); err != nil {
		t.Errorf("-ticket-rotation 8760h: %v", err)
	}
	// Not a duration stays "not a duration".
	if _, err := Load("serve", []string{"-drain-timeout", "forever"}, env(nil), io.Discard); err == nil || !strings.Contains(err.Error(), "is not a duration") {
		t.Errorf("-drain-timeout forever: %v", err)
	}
}

// TestFarmSettingsWithoutURL: a farm setting given without farm.url is
// refused, naming it and saying the node would serve alone, from a flag,
// the environment (also beside a blank TLSFARM_FARM_URL, which counts as
// unset) and the file. Before, the node started alone, sharing nothing,
// without a word.
func TestFarmSettingsWithoutURL(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "farm.secret")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(1)); err != nil {
		t.Fatal(err)
	}
	file := writeFile(t, "c.yaml", "farm:\n  name: web\n  secret_file: "+secret+"\n  write_through: true\n", 0o600)
	for _, tt := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"flag", []string{"-farm-name", "web"}, nil, "farm.name (flag -farm-name): is set, but farm.url is not"},
		{"environment, blank URL", nil, map[string]string{"TLSFARM_FARM_URL": "  ", "TLSFARM_FARM_SECRET_FILE": secret},
			"farm.secret_file ($TLSFARM_FARM_SECRET_FILE): is set, but farm.url is not"},
		{"file", []string{"-config", file}, nil, "remove farm.name, farm.secret_file, farm.write_through to serve alone"},
	} {
		_, err := Load("serve", tt.args, env(tt.env), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Load = %v, want an error saying %q", tt.name, err, tt.want)
		}
	}
	// With no farm setting at all, the node serves alone.
	if c, err := Load("serve", nil, env(map[string]string{"TLSFARM_FARM_URL": ""}), io.Discard); err != nil || c.Farm.URL != "" {
		t.Errorf("no farm settings: %v", err)
	}
}

// TestDrainTimeoutZero: limits.drain_timeout 0 is refused: it could mean
// "close at once" or "wait without end", and a stop should do neither by
// accident. Before, 0 was taken and a stop cut every open connection.
func TestDrainTimeoutZero(t *testing.T) {
	for _, args := range [][]string{{"-drain-timeout", "0"}, {"-drain-timeout", "0s"}} {
		_, err := Load("serve", args, env(nil), io.Discard)
		if err == nil || !strings.Contains(err.Error(), "limits.drain_timeout (flag -drain-timeout): must be positive") {
			t.Errorf("%v: Load = %v, want limits.drain_timeout refused", args, err)
		}
	}
	if c, err := Load("serve", []string{"-drain-timeout", "1ms"}, env(nil), io.Discard); err != nil || c.Limits.DrainTimeout.Milliseconds() != 1 {
		t.Errorf("-drain-timeout 1ms: %v", err)
	}
}

// TestNATSURLMixedSchemes: a NATS URL whose servers mix nats:// and tls://
// is refused for that, not with "only nats:// and tls:// URLs may list
// several servers", which they may.
func TestNATSURLMixedSchemes(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "farm.secret")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(1)); err != nil {
		t.Fatal(err)
	}
	_, err := Load("serve", []string{"-farm", "nats://a:4222,tls://b:4222", "-farm-secret", secret}, env(nil), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "share one scheme: nats:// and tls:// are mixed") {
		t.Errorf("mixed schemes: %v", err)
	}
	_, err = Load("serve", []string{"-farm", "redis://a:6379,redis://b:6379", "-farm-secret", secret}, env(nil), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "only nats:// and tls:// URLs may list several servers") {
		t.Errorf("two Redis servers: %v", err)
	}
	if _, err := Load("serve", []string{"-farm", "tls://a:4222,tls://b:4222", "-farm-secret", secret}, env(nil), io.Discard); err != nil {
		t.Errorf("two tls:// servers: %v", err)
	}
}

// TestClientTimeoutFloor: limits.handshake_timeout and limits.idle_timeout
// under 100ms are refused (a unit mistaken, 10ms for 10s, cut every
// client); 100ms is taken. Before, any positive value was.
func TestClientTimeoutFloor(t *testing.T) {
	for _, tt := range []struct{ flag, key string }{
		{"-handshake-timeout", "limits.handshake_timeout"},
		{"-idle-timeout", "limits.idle_timeout"},
	} {
		for _, v := range []string{"1ns", "10ms", "99ms"} {
			_, err := Load("serve", []string{tt.flag, v}, env(nil), io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.key+" (flag "+tt.flag+"): ") || !strings.Contains(err.Error(), "is under 100ms") {
				t.Errorf("%s %s: Load = %v, want %s refused", tt.flag, v, err, tt.key)
			}
		}
		if _, err := Load("serve", []string{tt.flag, "100ms"}, env(nil), io.Discard); err != nil {
			t.Errorf("%s 100ms: %v", tt.flag, err)
		}
	}
}
