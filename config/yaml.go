package config

import (
	"bytes"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/tlsfarm/tlsfarm/internal/redact"
)

// readFile decodes the YAML file at path over c. Keys the file leaves out
// keep their values in c; lists in the file replace c's lists whole.
func (c *Config) readFile(path string) error {
	data, err := readRegularFile(path, maxConfigFile)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	// A file holds one YAML document: settings in a second one would
	// otherwise be ignored without a word.
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc, more yaml.Node
	if err := dec.Decode(&doc); err != nil && err != io.EOF {
		return syntaxError(path, err)
	}
	for {
		err := dec.Decode(&more)
		if err == io.EOF {
			break
		}
		if err != nil {
			return syntaxError(path, err)
		}
		if n := more.Content; len(n) > 0 && (n[0].Kind != yaml.ScalarNode || n[0].Tag != "!!null" || n[0].Value != "") {
			return fmt.Errorf("config file %s line %d: a second YAML document; put every setting in one", path, more.Content[0].Line)
		}
	}
	if len(doc.Content) == 0 {
		return nil // an empty file sets nothing
	}
	d := decoder{file: path, sources: c.sources, budget: maxValues}
	return d.decode(doc.Content[0], reflect.ValueOf(c).Elem(), "")
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): `)

// syntaxError turns a YAML parser error into one line naming the file and
// the line.
func syntaxError(path string, err error) error {
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("config file %s line %s: malformed YAML: %s", path, m[1], msg[len(m[0]):])
	}
	return fmt.Errorf("config file %s: malformed YAML: %s", path, strings.TrimPrefix(msg, "yaml: "))
}

// A decoder fills a Config from a YAML document, refusing unknown keys and
// naming the key and line of anything it cannot use.
type decoder struct {
	file    string
	sources map[string]string
	budget  int // values left to decode (see maxValues)
}

// maxValues bounds the values (settings, list items) one file may decode
// to. A configuration has a few hundred; aliases can make a small file
// expand to billions (a list repeated under each of many certificates).
const maxValues = 1 << 20

// spend counts n values decoded from node at, refusing the file once
// there are more than maxValues.
func (d *decoder) spend(at *yaml.Node, n int) error {
	if d.budget -= n; d.budget < 0 {
		return d.errorf(at, "", "more than %d values: its aliases repeat too much", maxValues)
	}
	return nil
}

func (d *decoder) errorf(n *yaml.Node, key, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if key != "" {
		msg = key + ": " + msg
	}
	return fmt.Errorf("config file %s line %d: %s", d.file, n.Line, msg)
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, key string) error {
	if err := d.spend(n, 1+len(n.Content)); err != nil {
		return err
	}
	if n.Kind == yaml.AliasNode {
		if err := d.spend(n, len(n.Alias.Content)); err != nil {
			return err
		}
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // "key:" with no value leaves the default
	}
	switch {
	case v.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return d.errorf(n, key, "must be a mapping of settings, not %s", describe(n))
		}
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			name := join(key, k.Value)
			if line, dup := seen[k.Value]; dup {
				return d.errorf(k, "", "setting %q is given twice (first on line %d)", name, line)
			}
			seen[k.Value] = k.Line
			f, ok := fieldByTag(v, k.Value)
			if !ok {
				return d.errorf(k, "", "unknown setting %q%s", name, suggest(v.Type(), k.Value))
			}
			if err := d.decode(val, f, name); err != nil {
				return err
			}
		}
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Struct:
		if n.Kind != yaml.SequenceNode {
			return d.errorf(n, key, "must be a list, not %s", describe(n))
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, e := range n.Content {
			if err := d.decode(e, s.Index(i), fmt.Sprintf("%s[%d]", key, i)); err != nil {
				return err
			}
		}
		v.Set(s)
	case v.Kind() == reflect.Slice:
		switch n.Kind {
		case yaml.ScalarNode:
			v.Set(reflect.ValueOf(splitList(n.Value)))
		case yaml.SequenceNode:
			list := []string{}
			for _, e := range n.Content {
				if e.Kind != yaml.ScalarNode {
					return d.errorf(e, key, "list items must be single values, not %s", describe(e))
				}
				list = append(list, e.Value)
			}
			v.Set(reflect.ValueOf(list))
		default:
			return d.errorf(n, key, "must be a list, not %s", describe(n))
		}
	default:
		if n.Kind != yaml.ScalarNode {
			return d.errorf(n, key, "must be a single value, not %s", describe(n))
		}
		if err := parseScalar(v, n.Value); err != nil {
			return d.errorf(n, key, "%v", err)
		}
	}
	d.sources[key] = fmt.Sprintf("%s line %d", d.file, n.Line)
	return nil
}

func join(key, name string) string {
	if key == "" {
		return name
	}
	return key + "." + name
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	// A farm URL in the wrong place (farm: nats://TOKEN@host) keeps its
	// secret.
	return strconv.Quote(redact.URL(n.Value))
}

// suggest returns ` (did you mean "x"?)` for the known key of struct type t
// closest to name, if one is close.
func suggest(t reflect.Type, name string) string {
	best, bestDist := "", 3
	for i := range t.NumField() {
		k := yamlName(t.Field(i))
		if k == "" {
			continue
		}
		if d := distance(strings.ToLower(name), k); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
