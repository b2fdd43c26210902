package config

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
)

// RestartOnly returns the keys of the settings that differ between old and
// new but take effect only on a restart (Setting.Reloadable is false), such
// as "listeners[0].address" or "cache.size". A reload applies the other
// settings of new and keeps these at their old values.
func RestartOnly(old, new *Config) []string {
	var out []string
	walkDiff(reflect.ValueOf(old).Elem(), reflect.ValueOf(new).Elem(), "", "", &out)
	if !sameSecrets(old, new) {
		out = append(out, "farm.secret_file (its contents)")
	}
	return out
}

func walkDiff(a, b reflect.Value, key, generic string, out *[]string) {
	t := a.Type()
	for i := range t.NumField() {
		name := yamlName(t.Field(i))
		if name == "" {
			continue
		}
		fa, fb := a.Field(i), b.Field(i)
		k, g := join(key, name), join(generic, name)
		switch {
		case fa.Kind() == reflect.Struct:
			walkDiff(fa, fb, k, g, out)
		case fa.Kind() == reflect.Slice && fa.Type().Elem().Kind() == reflect.Struct:
			if fa.Len() != fb.Len() && hasRestartOnly(g+"[].") {
				*out = append(*out, fmt.Sprintf("%s (%d entries, now %d)", k, fa.Len(), fb.Len()))
			}
			for j := range min(fa.Len(), fb.Len()) {
				walkDiff(fa.Index(j), fb.Index(j), fmt.Sprintf("%s[%d]", k, j), g+"[]", out)
			}
		default:
			s, ok := settingByKey(g)
			if ok && !s.Reloadable && !reflect.DeepEqual(fa.Interface(), fb.Interface()) {
				*out = append(*out, k)
			}
		}
	}
}

// hasRestartOnly reports whether any setting under prefix needs a restart.
func hasRestartOnly(prefix string) bool {
	for _, s := range settings {
		if strings.HasPrefix(s.Key, prefix) && !s.Reloadable {
			return true
		}
	}
	return false
}

func sameSecrets(a, b *Config) bool {
	x, y := a.Farm.Secrets, b.Farm.Secrets
	if len(x) != len(y) {
		return false
	}
	for i := range x {
		if x[i].ID != y[i].ID || !bytes.Equal(x[i].Bytes, y[i].Bytes) {
			return false
		}
	}
	return true
}
