package config

import (
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
