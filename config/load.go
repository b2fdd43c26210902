package config

import (
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"

	"github.com/tlsfarm/tlsfarm/internal/redact"
)

// configEnv is the environment variable that names the configuration file
// when the -config flag does not.
const configEnv = "TLSFARM_CONFIG"

// Load reads the configuration from the flags in args (the arguments after
// "serve"), the environment (getenv, such as os.Getenv; an empty or blank
// value counts as unset), and the YAML file named by -config or TLSFARM_CONFIG,
// with precedence flag > environment > file > default, and then checks it:
// an error names the setting at fault (see the package documentation).
// Help and flag errors are written to output; for -h it returns
// flag.ErrHelp.
//
// Load is meant to be called again, with the same arguments, to reload:
// the file is read anew, and certificates and secrets are loaded again.
func Load(name string, args []string, getenv func(string) string, output io.Writer) (*Config, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(output)
	file := fs.String("config", "", "YAML configuration `file` (or $"+configEnv+")")
	flags := map[string]*flagValue{}
	for _, s := range settings {
		if s.Flag == "" {
			continue
		}
		fv := &flagValue{isBool: isBool(s.Key)}
		flags[s.Key] = fv
		usage := s.Usage
		if s.Env != "" {
			usage += " ($" + s.Env + ")"
		}
		if s.Default != "" {
			usage += " (default " + s.Default + ")"
		}
		fs.Var(fv, s.Flag, usage)
	}
	fs.Usage = func() {
		fmt.Fprintf(output, "Usage: %s [flags]\n\nPrecedence: flag > environment > file > default. See docs/config.md.\n\n", name)
		printFlags(output, fs)
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return nil, err
		}
		return nil, &UsageError{err}
	}
	if fs.NArg() > 0 {
		// A stray argument may be a farm URL whose flag was left out.
		// It is the command line's fault, as a flag the parser rejects:
		// said, with the usage, as the flag package says those.
		err := fmt.Errorf("unexpected argument %q (settings are flags, such as -listen 127.0.0.1:8443)", redact.URL(fs.Arg(0)))
		fmt.Fprintln(output, err)
		fs.Usage()
		return nil, &UsageError{err}
	}

	c := defaults()
	c.sources = map[string]string{}
	if v := getenv(configEnv); *file == "" && strings.TrimSpace(v) != "" {
		*file = v
	}
	if *file != "" {
		c.File = *file
		if err := c.readFile(*file); err != nil {
			return nil, err
		}
	}
	for _, s := range settings {
		// Blank counts as unset, as empty does: parseScalar would trim it
		// to nothing and override the file with it.
		if v := getenv(s.Env); s.Env != "" && strings.TrimSpace(v) != "" {
			if err := c.apply(s.Key, v, "$"+s.Env); err != nil {
				return nil, err
			}
		}
	}
	for _, s := range settings {
		if fv := flags[s.Key]; fv != nil && fv.set {
			if err := c.apply(s.Key, fv.value, "flag -"+s.Flag); err != nil {
				return nil, err
			}
		}
	}
	c.fill()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// A UsageError is a command line that the flag package could not parse, or
// that holds an argument that is not a flag; Load has already printed the
// error and the usage to its output.
type UsageError struct{ Err error }

// Error returns the flag package's message.
func (e *UsageError) Error() string { return e.Err.Error() }

// Unwrap returns the flag package's error.
func (e *UsageError) Unwrap() error { return e.Err }

// apply sets key from a flag or the environment and records the source.
func (c *Config) apply(key, value, source string) error {
	concrete := strings.ReplaceAll(key, "[]", "[0]")
	if err := c.set(key, value); err != nil {
		return fmt.Errorf("%s (%s): %v", concrete, source, err)
	}
	c.sources[concrete] = source
	return nil
}

// fill sets the defaults that depend on other settings.
func (c *Config) fill() {
	if c.Node == "" {
		c.Node, _ = os.Hostname()
		if c.Node == "" {
			c.Node = "tlsfarm"
		}
	}
	if len(c.Listeners) == 0 {
		c.Listeners = []Listener{{}}
	}
	for i := range c.Listeners {
		listenerDefaults(&c.Listeners[i])
	}
}

// FileSecrets returns the settings to which the configuration file gives
// a secret: farm.url when it holds a password or a token, and admin.token.
// It returns nil when there is no file or the file gives none (the
// environment, a flag or a file of the secret's own may give them).
func (c *Config) FileSecrets() []string {
	if c.File == "" {
		return nil
	}
	fromFile := func(key string) bool { return strings.HasPrefix(c.sources[key], c.File+" line ") }
	var keys []string
	if c.Farm.URL != "" && fromFile("farm.url") && redact.URL(c.Farm.URL) != c.Farm.URL {
		keys = append(keys, "farm.url")
	}
	if c.Admin.Token != "" && fromFile("admin.token") {
		keys = append(keys, "admin.token")
	}
	return keys
}

// where returns " (from SOURCE)" for a setting that did not come from its
// default, to point the operator at what to change.
func (c *Config) where(key string) string {
	if src, ok := c.sources[key]; ok {
		return " (" + src + ")"
	}
	return ""
}

// printFlags prints the flags as flag.PrintDefaults does, naming each
// flag's argument by the kind of its setting.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	keys := map[string]string{}
	for _, s := range settings {
		keys[s.Flag] = s.Key
	}
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		if arg == "value" {
			arg = argName(keys[f.Name])
		}
		if arg != "" {
			arg = " " + arg
		}
		fmt.Fprintf(w, "  -%s%s\n    \t%s\n", f.Name, arg, usage)
	})
}

// argName names the argument of a setting's flag by its kind.
func argName(key string) string {
	v := reflect.ValueOf(defaults()).Elem()
	for _, part := range strings.Split(key, ".") {
		name, list := strings.CutSuffix(part, "[]")
		f, ok := fieldByTag(v, name)
		if !ok {
			return "value"
		}
		v = f
		if list {
			v = reflect.New(v.Type().Elem()).Elem()
		}
	}
	switch {
	case v.Type() == durationType:
		return "duration"
	case v.Kind() == reflect.Int:
		return "n"
	case v.Kind() == reflect.Bool:
		return ""
	case v.Kind() == reflect.Slice:
		return "list"
	}
	return "string"
}

// isBool reports whether the setting key holds a bool.
func isBool(key string) bool {
	t := reflect.TypeFor[Config]()
	for _, part := range strings.Split(key, ".") {
		name, list := strings.CutSuffix(part, "[]")
		found := false
		for i := range t.NumField() {
			if yamlName(t.Field(i)) == name {
				t, found = t.Field(i).Type, true
				break
			}
		}
		if !found {
			return false
		}
		if list {
			t = t.Elem()
		}
	}
	return t.Kind() == reflect.Bool
}

// A flagValue records a flag's text for apply, which parses it once the
// file and the environment have been read.
type flagValue struct {
	isBool bool
	value  string
	set    bool
}

func (f *flagValue) String() string { return f.value }

func (f *flagValue) Set(s string) error {
	f.value, f.set = s, true
	return nil
}

func (f *flagValue) IsBoolFlag() bool { return f.isBool }
