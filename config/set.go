package config

import (
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/redact"
)

var durationType = reflect.TypeFor[time.Duration]()

// MaxDuration is the longest duration any setting takes: a year. No
// timeout, lifetime or interval needs more, and values near
// time.Duration's limit (about 292 years) overflow when added to a clock.
const MaxDuration = 365 * 24 * time.Hour

// durationForm matches what time.ParseDuration reads (numbers with units),
// to tell a value too long for it from one that is not a duration.
var durationForm = regexp.MustCompile(`^[-+]?([0-9]*(\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h))+$`)

// fmtHours writes d in hours, as the settings' documentation does.
func fmtHours(d time.Duration) string { return fmt.Sprintf("%dh", d/time.Hour) }

// set parses s into the setting key of c, creating the first element of
// each list on the way. It is how flags and environment variables apply.
func (c *Config) set(key, s string) error {
	v := reflect.ValueOf(c).Elem()
	for _, part := range strings.Split(key, ".") {
		name, list := strings.CutSuffix(part, "[]")
		f, ok := fieldByTag(v, name)
		if !ok {
			panic("config: no field for key " + key)
		}
		v = f
		if list {
			if v.Len() == 0 {
				v.Set(reflect.Append(v, reflect.Zero(v.Type().Elem())))
			}
			v = v.Index(0)
		}
	}
	return parseScalar(v, s)
}

// fieldByTag returns the field of struct v whose YAML name is name.
// Fields without a YAML name (Config.File, Admin.BearerToken, Farm.Secrets,
// those of types without tags) match no name, "" included.
func fieldByTag(v reflect.Value, name string) (reflect.Value, bool) {
	if name == "" {
		return reflect.Value{}, false
	}
	t := v.Type()
	for i := range t.NumField() {
		if yamlName(t.Field(i)) == name {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

// yamlName returns the YAML key of a struct field, or "" if it has none.
func yamlName(f reflect.StructField) string {
	tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if tag == "-" || !f.IsExported() {
		return ""
	}
	return tag
}

// parseScalar parses s into v by v's type. Its errors name the value, not
// the setting: callers add that. A value shown in an error goes through
// redact.URL: a farm URL given to the wrong setting keeps its password.
func parseScalar(v reflect.Value, s string) error {
	s = strings.TrimSpace(s)
	switch {
	case v.Type() == durationType:
		d, err := time.ParseDuration(s)
		if err != nil && strings.Contains(err.Error(), "invalid duration") && durationForm.MatchString(s) {
			// Well formed, but past time.Duration's 292 years.
			return fmt.Errorf("%q is too long (at most %v, a year)", s, fmtHours(MaxDuration))
		}
		if err != nil {
			return fmt.Errorf("%q is not a duration (write it like 500ms, 30s, 5m or 2h)", redact.URL(s))
		}
		if d < 0 {
			return fmt.Errorf("%q is negative", s)
		}
		if d > MaxDuration {
			// Added to a clock, such a value overflows: a session or
			// a key would expire at once, or in the past.
			return fmt.Errorf("%q is too long (at most %v, a year)", s, fmtHours(MaxDuration))
		}
		v.SetInt(int64(d))
	case v.Kind() == reflect.String:
		v.SetString(s)
	case v.Kind() == reflect.Int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", redact.URL(s))
		}
		if n < 0 {
			return fmt.Errorf("%q is negative", s)
		}
		v.SetInt(int64(n))
	case v.Kind() == reflect.Bool:
		b, err := parseBool(s)
		if err != nil {
			return err
		}
		v.SetBool(b)
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.String:
		v.Set(reflect.ValueOf(splitList(s)))
	default:
		return fmt.Errorf("cannot be given as %q", redact.URL(s))
	}
	return nil
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "true", "yes", "on", "1":
		return true, nil
	case "false", "no", "off", "0":
		return false, nil
	}
	return false, fmt.Errorf("%q is not true or false", redact.URL(s))
}

// splitList splits a comma-separated list, dropping blanks.
func splitList(s string) []string {
	out := []string{}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
