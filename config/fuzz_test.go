package config

import (
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzConfigFile checks that no configuration file makes the decoder or
// the validation panic: every input is either a Config or an error that
// names the file.
func FuzzConfigFile(f *testing.F) {
	if doc, err := os.ReadFile("../docs/config.md"); err == nil {
		if _, rest, ok := strings.Cut(string(doc), "## A complete file\n\n```yaml\n"); ok {
			example, _, _ := strings.Cut(rest, "```")
			f.Add(example)
		}
	}
	f.Add("node: a\ncache:\n  size: 1000\n  lifetime: 1h\nlisteners:\n  - address: 127.0.0.1:0\n    alpn: [h2]\n")
	f.Add("farm: {url: 'redis://127.0.0.1:6379/0', name: x}\n")
	f.Add("a: &x [1, *x]\n")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content string) {
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		c := defaults()
		c.sources = map[string]string{}
		if err := c.readFile(p); err != nil {
			if !strings.Contains(err.Error(), p) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		c.fill()
		_ = c.validate()
	})
}

// FuzzEnv checks that no value of an environment variable makes Load
// panic, and that an error it gives never quotes the password of a URL given that way (a farm URL
// in $TLSFARM_FARM_URL or $TLSFARM_UPSTREAM).
func FuzzEnv(f *testing.F) {
	var envs []Setting
	for _, s := range settings {
		if s.Env != "" {
			envs = append(envs, s)
		}
	}
	for i, s := range envs {
		f.Add(uint8(i), s.Default)
		if s.Key == "farm.url" {
			f.Add(uint8(i), "redis://:hunter2hunter2@h:6379/x?db=z")
			f.Add(uint8(i), "nats://u:hunter2/hunter2@h:4222")
			f.Add(uint8(i), "amqp://u:hunter2hunter2@h:port/")
		}
	}
	f.Add(uint8(0), " ")
	f.Fuzz(func(t *testing.T, i uint8, value string) {
		s := envs[int(i)%len(envs)]
		getenv := func(name string) string {
			if name == s.Env {
				return value
			}
			return ""
		}
		_, err := Load("tlsfarm", nil, getenv, io.Discard)
		if err == nil {
			return
		}
		msg := err.Error()
		// A URL's password; a file's name is no URL, and is quoted.
		if s.Key != "farm.url" && s.Key != "listeners[].upstream" {
			return
		}
		if u, perr := url.Parse(strings.TrimSpace(value)); perr == nil {
			if p, ok := u.User.Password(); ok && len(p) >= 8 && strings.Contains(msg, p) {
				t.Fatalf("$%s=%q: the error quotes the password: %v", s.Env, value, err)
			}
		}
	})
}
