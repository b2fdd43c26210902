package keyexport

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
)

// A Target is a place a Set is exported to, in one terminator's format.
type Target interface {
	// Export writes s. It either replaces the whole previous set or leaves
	// it in place and returns an error; it never returns key bytes in the
	// error.
	Export(ctx context.Context, s *Set) error

	// String describes the target for logs and metrics, such as
	// "nginx:/run/tlsfarm/nginx". It holds no secret.
	String() string
}

// ParseTarget parses the argument of tlsfarm keys' -export flag:
//
//	nginx:DIR                     nginx key files in DIR (see NginxTarget)
//	haproxy:FILE[,socket=PATH]    HAProxy's tls-ticket-keys FILE, pushed live
//	                              through the runtime API at PATH, a Unix socket
//	                              or a loopback host:port (see HAProxyTarget)
//	file:PATH                     the JSON key set file (see FileTarget)
//
// Paths must be absolute.
func ParseTarget(spec string) (Target, error) {
	kind, rest, ok := strings.Cut(spec, ":")
	if !ok || rest == "" {
		return nil, fmt.Errorf("export %q: want nginx:DIR, haproxy:FILE[,socket=PATH] or file:PATH", spec)
	}
	abs := func(what, p string) error {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("export %q: the %s must be an absolute path", spec, what)
		}
		return nil
	}
	switch kind {
	case "nginx":
		if err := abs("directory", rest); err != nil {
			return nil, err
		}
		return &NginxTarget{Dir: filepath.Clean(rest)}, nil
	case "haproxy":
		parts := strings.Split(rest, ",")
		t := &HAProxyTarget{File: parts[0]}
		if err := abs("file", t.File); err != nil {
			return nil, err
		}
		for _, p := range parts[1:] {
			k, v, _ := strings.Cut(p, "=")
			if k != "socket" || v == "" {
				return nil, fmt.Errorf("export %q: unknown option %q (want socket=PATH)", spec, p)
			}
			// One HAProxy per target: a second socket replaced the first
			// without a word, and the first HAProxy never got a key.
			if t.Socket != "" {
				return nil, fmt.Errorf("export %q: socket= is given twice (one HAProxy per target: give each its own -export)", spec)
			}
			if _, err := runtimeNetwork(v); err != nil {
				return nil, fmt.Errorf("export %q: %v", spec, err)
			}
			t.Socket = v
		}
		return t, nil
	case "file":
		if err := abs("file", rest); err != nil {
			return nil, err
		}
		return &FileTarget{Path: filepath.Clean(rest)}, nil
	}
	return nil, fmt.Errorf("export %q: unknown format %q (want nginx, haproxy or file)", spec, kind)
}
