package config

import "reflect"

func reflectTypeOfConfig() reflect.Type { return reflect.TypeFor[Config]() }

// collectKeys appends the generic keys ("listeners[].address") of the leaf
// settings of struct type t.
func collectKeys(t reflect.Type, prefix string, out *[]string) {
	for i := range t.NumField() {
		f := t.Field(i)
		name := yamlName(f)
		if name == "" {
			continue
		}
		key := join(prefix, name)
		switch {
		case f.Type.Kind() == reflect.Struct:
			collectKeys(f.Type, key, out)
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
			collectKeys(f.Type.Elem(), key+"[]", out)
		default:
			*out = append(*out, key)
		}
	}
}
