package config

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// env returns a getenv over a map.
func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// writeFile writes a file in a temporary directory and returns its path.
func writeFile(t *testing.T, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	c, err := Load("serve", nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Listeners) != 1 {
		t.Fatalf("listeners = %d, want 1", len(c.Listeners))
	}
	l := c.Listeners[0]
	if l.Address != defaultAddress || l.Upstream != "builtin" || len(l.Certificates) != 0 {
		t.Errorf("default listener = %+v", l)
	}
	if strings.Join(l.ALPN, ",") != "h2,http/1.1" {
		t.Errorf("default ALPN = %v", l.ALPN)
	}
	if c.Admin.Address != defaultAdminAddress || c.Farm.URL != "" || c.Cache.Mode != "stateful" || !c.Cache.SNIBinding {
		t.Errorf("defaults = %+v", c)
	}
	if c.Node == "" {
		t.Error("node name is empty")
	}
}

// TestPrecedence checks flag > environment > file > default for settings of
// each kind (string, number, duration, bool, list, nested in a listener).
func TestPrecedence(t *testing.T) {
	file := writeFile(t, "c.yaml", `
node: from-file
cache:
  size: 1000
  lifetime: 1h
  single_use: true
listeners:
  - address: 127.0.0.1:1001
    upstream: tcp://127.0.0.1:9
    alpn: [imap]
limits:
  handshake_timeout: 3s
  max_websockets_per_connection: 4
`, 0o644)
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(*Config) bool
	}{
		{"default", nil, nil, func(c *Config) bool {
			return c.Cache.Size == 102400 && c.Node != "from-file" && c.Limits.MaxWebSocketsPerConnection == 16
		}},
		{"file over default", []string{"-config", file}, nil, func(c *Config) bool {
			return c.Node == "from-file" && c.Cache.Size == 1000 && c.Cache.Lifetime == time.Hour && c.Cache.SingleUse &&
				c.Listeners[0].Address == "127.0.0.1:1001" && c.Limits.HandshakeTimeout == 3*time.Second &&
				c.Limits.MaxWebSocketsPerConnection == 4
		}},
		{"file named by the environment", nil, map[string]string{configEnv: file}, func(c *Config) bool { return c.Node == "from-file" }},
		{"env over file", []string{"-config", file}, map[string]string{
			"TLSFARM_NODE": "from-env", "TLSFARM_CACHE_SIZE": "2000", "TLSFARM_SESSION_LIFETIME": "2h",
			"TLSFARM_SINGLE_USE": "false", "TLSFARM_LISTEN": "127.0.0.1:1002", "TLSFARM_ALPN": "smtp, imap",
		}, func(c *Config) bool {
			return c.Node == "from-env" && c.Cache.Size == 2000 && c.Cache.Lifetime == 2*time.Hour && !c.Cache.SingleUse &&
				c.Listeners[0].Address == "127.0.0.1:1002" && strings.Join(c.Listeners[0].ALPN, ",") == "smtp,imap" &&
				c.Listeners[0].Upstream == "tcp://127.0.0.1:9"
		}},
		{"flag over env", []string{"-config", file, "-node", "from-flag", "-cache-size", "3000", "-single-use", "-listen", "127.0.0.1:1003"},
			map[string]string{"TLSFARM_NODE": "from-env", "TLSFARM_CACHE_SIZE": "2000", "TLSFARM_SINGLE_USE": "false", "TLSFARM_LISTEN": "127.0.0.1:1002"},
			func(c *Config) bool {
				return c.Node == "from-flag" && c.Cache.Size == 3000 && c.Cache.SingleUse && c.Listeners[0].Address == "127.0.0.1:1003"
			}},
		{"bool flag with value", []string{"-sni-binding=false"}, nil, func(c *Config) bool { return !c.Cache.SNIBinding }},
		{"WebSocket bound: env over file", []string{"-config", file}, map[string]string{"TLSFARM_MAX_WEBSOCKETS_PER_CONNECTION": "0"},
			func(c *Config) bool { return c.Limits.MaxWebSocketsPerConnection == 0 }},
		{"WebSocket bound: flag over env", []string{"-config", file, "-max-websockets-per-connection", "64"},
			map[string]string{"TLSFARM_MAX_WEBSOCKETS_PER_CONNECTION": "0"},
			func(c *Config) bool { return c.Limits.MaxWebSocketsPerConnection == 64 }},
		{"empty env is unset", []string{"-config", file}, map[string]string{"TLSFARM_NODE": ""}, func(c *Config) bool { return c.Node == "from-file" }},
		{"flag makes the first listener", []string{"-listen", "127.0.0.1:1004", "-upstream", "tcp://127.0.0.1:7"}, nil, func(c *Config) bool {
			return len(c.Listeners) == 1 && c.Listeners[0].Address == "127.0.0.1:1004" && c.Listeners[0].ALPN == nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load("serve", tt.args, env(tt.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Errorf("got %+v", c)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var out strings.Builder
	_, err := Load("tlsfarm serve", []string{"-h"}, env(nil), &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{"-listen", "TLSFARM_LISTEN", "-farm-secret", "docs/config.md"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
}

func TestEverySettingHasAField(t *testing.T) {
	for _, s := range settings {
		c := defaults()
		value := "1"
		if isBool(s.Key) {
			value = "true"
		}
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("setting %s: %v", s.Key, r)
				}
			}()
			c.set(s.Key, value)
		}()
		if s.Env != "" && !strings.HasPrefix(s.Env, "TLSFARM_") {
			t.Errorf("setting %s: environment variable %s lacks the TLSFARM_ prefix", s.Key, s.Env)
		}
	}
}
