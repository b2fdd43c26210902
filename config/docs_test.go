package config

import (
	"os"
	"strings"
	"testing"
)

// TestDocsListEverySetting keeps docs/config.md in step with Settings: each
// setting has a row with its flag, environment variable and reload mode.
func TestDocsListEverySetting(t *testing.T) {
	doc, err := os.ReadFile("../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "| `") {
			key := strings.Trim(strings.Split(line, "|")[1], " `")
			rows[key] = line
		}
	}
	for _, s := range settings {
		row, ok := rows[s.Key]
		if !ok {
			t.Errorf("docs/config.md has no row for %s", s.Key)
			continue
		}
		cells := strings.Split(row, "|")
		flag, env, mode := strings.TrimSpace(cells[2]), strings.TrimSpace(cells[3]), strings.TrimSpace(cells[5])
		if want := "`-" + s.Flag + "`"; s.Flag != "" && flag != want || s.Flag == "" && flag != "—" {
			t.Errorf("%s: flag column %q, want -%s", s.Key, flag, s.Flag)
		}
		if want := "`" + s.Env + "`"; s.Env != "" && env != want || s.Env == "" && env != "—" {
			t.Errorf("%s: environment column %q, want %s", s.Key, env, s.Env)
		}
		if want := map[bool]string{true: "reload", false: "restart"}[s.Reloadable]; mode != want {
			t.Errorf("%s: reload column %q, want %s", s.Key, mode, want)
		}
		delete(rows, s.Key)
	}
	for key := range rows {
		t.Errorf("docs/config.md documents %s, which is not a setting", key)
	}
}

// TestDocsExampleFileDecodes checks that the complete file in docs/config.md
// uses only real settings with values of the right kinds.
func TestDocsExampleFileDecodes(t *testing.T) {
	doc, err := os.ReadFile("../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "## A complete file\n\n```yaml\n")
	if !ok {
		t.Fatal("no complete file in docs/config.md")
	}
	example, _, _ := strings.Cut(rest, "```")
	c := defaults()
	c.sources = map[string]string{}
	if err := c.readFile(writeFile(t, "example.yaml", example, 0o644)); err != nil {
		t.Fatal(err)
	}
	if len(c.Listeners) != 2 || c.Listeners[1].Upstream != "tcp://127.0.0.1:143" || c.Farm.Name != "prod-edge" {
		t.Errorf("decoded %+v", c)
	}
}
