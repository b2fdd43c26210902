package config

import (
	"io"
	"strings"
	"testing"
)

// TestURLInAnyStringSettingNotShown: a farm URL given by mistake to any
// setting that takes a word or an address (an environment variable mixed
// up, a line pasted under the wrong key) is refused naming the setting,
// and the error never shows its password or token. Before the fix the
// checks of these settings quoted the value whole.
func TestURLInAnyStringSettingNotShown(t *testing.T) {
	const url = "redis://:s3cret@10.0.0.5:6379/0"
	for _, tt := range []struct{ env, key string }{
		{"TLSFARM_LOG_FORMAT", "log.format"},
		{"TLSFARM_LOG_LEVEL", "log.level"},
		{"TLSFARM_LISTEN", "listeners[0].address"},
		{"TLSFARM_TLS_MIN", "listeners[0].min_version"},
		{"TLSFARM_TLS_MAX", "listeners[0].max_version"},
		{"TLSFARM_ALPN", "listeners[0].alpn"},
		{"TLSFARM_PROXY_PROTOCOL_TRUSTED", "listeners[0].proxy_protocol.trusted"},
		{"TLSFARM_EARLY_DATA_TRUSTED", "listeners[0].early_data_trusted"},
		{"TLSFARM_CACHE_MODE", "cache.mode"},
		{"TLSFARM_ADMIN_ADDRESS", "admin.address"},
	} {
		t.Run(tt.key, func(t *testing.T) {
			_, err := Load("serve", nil, env(map[string]string{tt.env: url}), io.Discard)
			if err == nil {
				t.Fatal("accepted a farm URL")
			}
			if !strings.HasPrefix(err.Error(), tt.key+" ($"+tt.env+")") {
				t.Errorf("error %q does not name %s", err, tt.key)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error shows the secret: %v", err)
			}
		})
	}
	// farm.mode is checked only with a farm.
	t.Run("farm.mode", func(t *testing.T) {
		_, err := Load("serve", nil, env(map[string]string{
			"TLSFARM_FARM_URL": "redis://127.0.0.1:6379", "TLSFARM_FARM_MODE": url,
		}), io.Discard)
		if err == nil || !strings.HasPrefix(err.Error(), "farm.mode") {
			t.Fatalf("error %v, want one naming farm.mode", err)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error shows the secret: %v", err)
		}
	})
}

// TestLogLevelOnlyTheFour: log.level takes debug, info, warn or error (in
// any case), as documented. Before the fix log/slog's own syntax got
// through: "info+8" or "error+4" silenced every error line, "warning" was
// a typo that slog took as a level with an offset.
func TestLogLevelOnlyTheFour(t *testing.T) {
	for _, tt := range []struct {
		value string
		ok    bool
	}{
		{"debug", true}, {"info", true}, {"warn", true}, {"error", true},
		{"INFO", true}, {"Warn", true},
		{"info+8", false}, {"error+4", false}, {"debug-4", false}, {"warn+1", false}, {"", false},
	} {
		_, err := Load("serve", []string{"-log-level", tt.value}, env(nil), io.Discard)
		switch {
		case tt.ok && err != nil:
			t.Errorf("%q: %v", tt.value, err)
		case !tt.ok && err == nil:
			t.Errorf("%q accepted", tt.value)
		case !tt.ok && !strings.HasPrefix(err.Error(), "log.level (flag -log-level): "):
			t.Errorf("%q: error %v does not name log.level", tt.value, err)
		}
	}
}

// TestBlankEnvironmentCountsAsUnset: a variable of white space only, as
// an empty one, leaves the file's value (and a blank TLSFARM_CONFIG names
// no file). Before the fix it was trimmed to
// nothing and then applied: TLSFARM_FARM_URL=" " took the node out of the
// farm the file named, and TLSFARM_CERT=" " dropped the file's certificate
// for a self-signed one, both without a word.
func TestBlankEnvironmentCountsAsUnset(t *testing.T) {
	file := writeFile(t, "c.yaml", "node: from-file\nlisteners:\n  - address: 127.0.0.1:8444\n    upstream: http://127.0.0.1:8080\n", 0o644)
	for _, blank := range []string{" ", "\t", " \n"} {
		if _, err := Load("serve", nil, env(map[string]string{"TLSFARM_CONFIG": blank}), io.Discard); err != nil {
			t.Errorf("TLSFARM_CONFIG=%q: %v", blank, err)
		}
		c, err := Load("serve", []string{"-config", file}, env(map[string]string{
			"TLSFARM_NODE": blank, "TLSFARM_LISTEN": blank, "TLSFARM_UPSTREAM": blank,
		}), io.Discard)
		if err != nil {
			t.Fatalf("%q: %v", blank, err)
		}
		if c.Node != "from-file" || c.Listeners[0].Address != "127.0.0.1:8444" || c.Listeners[0].Upstream != "http://127.0.0.1:8080" {
			t.Errorf("%q: node %q, address %q, upstream %q: the blank variables overrode the file",
				blank, c.Node, c.Listeners[0].Address, c.Listeners[0].Upstream)
		}
	}
}

// TestAliasExpansionBounded: YAML aliases may repeat a part of the file,
// but a small file whose aliases expand to millions of values (a list of
// server names repeated under each of many certificates) is refused,
// naming the file and the line, before it is expanded. Before the fix it
// was expanded whole: here about four million names from a file of 30 KB,
// and a few more lines make it gigabytes.
func TestAliasExpansionBounded(t *testing.T) {
	// Aliases used as they are meant to be still work.
	ok := "listeners:\n  - address: 127.0.0.1:8444\n    alpn: &p [h2]\n  - address: 127.0.0.1:8445\n    alpn: *p\n"
	c, err := Load("serve", []string{"-config", writeFile(t, "ok.yaml", ok, 0o644)}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Listeners[1].ALPN; len(got) != 1 || got[0] != "h2" {
		t.Fatalf("the alias gave %q", got)
	}

	var y strings.Builder
	y.WriteString("listeners:\n  - address: 127.0.0.1:8444\n    alpn: &n [")
	for i := range 2000 {
		if i > 0 {
			y.WriteString(", ")
		}
		y.WriteString("h2")
	}
	y.WriteString("]\n    certificates:\n      - &c {cert: c.pem, key: k.pem, names: *n}\n")
	for range 2000 {
		y.WriteString("      - *c\n")
	}
	_, err = Load("serve", []string{"-config", writeFile(t, "c.yaml", y.String(), 0o644)}, env(nil), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "aliases") || !strings.Contains(err.Error(), " line ") {
		t.Fatalf("error %v, want one about the aliases naming a line", err)
	}
}

// TestUpstreamSchemeInLowerCase: the proxy recognises an upstream by its
// scheme as written (tcp://, http://, https://). Before the fix
// TCP://host:143 or HTTP://host:8080 passed Load (url.Parse lowers the
// scheme), so check said "configuration OK", and serve then refused to
// start with an error that did not name the setting; a TCP:// upstream
// was also given the HTTP ALPN defaults.
func TestUpstreamSchemeInLowerCase(t *testing.T) {
	for _, up := range []string{"TCP://127.0.0.1:143", "HTTP://127.0.0.1:8080", "Https://example.com"} {
		_, err := Load("serve", []string{"-upstream", up}, env(nil), io.Discard)
		if err == nil || !strings.HasPrefix(err.Error(), "listeners[0].upstream (flag -upstream): ") {
			t.Errorf("%s: error %v, want one naming listeners[0].upstream", up, err)
		}
	}
	for _, up := range []string{"tcp://127.0.0.1:143", "http://127.0.0.1:8080", "https://example.com", "builtin"} {
		if _, err := Load("serve", []string{"-upstream", up}, env(nil), io.Discard); err != nil {
			t.Errorf("%s: %v", up, err)
		}
	}
}

// TestFarmURLSchemeInLowerCase: as for upstreams, the daemon picks the
// farm transport by the scheme as written. Before the fix REDIS://... or
// NATS://... passed Load and check, and serve then refused it ("no
// transport for this URL scheme").
func TestFarmURLSchemeInLowerCase(t *testing.T) {
	for _, u := range []string{"REDIS://:s3cret@127.0.0.1:6379", "Nats://s3cret@127.0.0.1:4222", "nats://127.0.0.1:4222,NATS://127.0.0.1:4223", "AMQP://u:s3cret@127.0.0.1/"} {
		_, err := Load("serve", []string{"-farm", u}, env(nil), io.Discard)
		if err == nil || !strings.HasPrefix(err.Error(), "farm.url (flag -farm): ") {
			t.Errorf("%s: error %v, want one naming farm.url", u, err)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error shows the secret: %v", err)
		}
	}
}

// TestEmptyKeyIsUnknown: a YAML key "" is an unknown setting like any
// other. Before the fix it matched the first field without a YAML name:
// the file's "": x set Config.File, admin's the bearer token field, and
// farm's the farm secrets, all without a word.
func TestEmptyKeyIsUnknown(t *testing.T) {
	for _, file := range []string{
		"\"\": /etc/other.yaml\n",
		"admin:\n  \"\": abcdefghijklmnopqrstuvwxyz\n",
		"farm:\n  \"\": []\n",
		"listeners:\n  - certificates:\n      - \"\": x\n",
	} {
		_, err := Load("serve", []string{"-config", writeFile(t, "c.yaml", file, 0o644)}, env(nil), io.Discard)
		if err == nil || !strings.Contains(err.Error(), `unknown setting`) {
			t.Errorf("%q: error %v, want an unknown setting", file, err)
		}
	}
}
