// Package redact keeps the passwords of connection URLs out of error text.
//
// The transports take a URL such as amqp://user:pass@host/ and report
// errors from url.Parse and from client libraries, some of which quote the
// URL they were given. Before such an error is returned or logged, the
// transport passes it through URLError or Error.
package redact

import (
	"errors"
	"net/url"
	"strings"
)

// mask is what Error puts in place of a secret.
const mask = "xxxxx"

// Passwords returns the password in u's userinfo, decoded and, where it
// differs, as written in the URL (percent-encoded), so that Error finds it
// in either form. It returns nil if u has no password or an empty one.
func Passwords(u *url.URL) []string {
	p, ok := u.User.Password()
	if !ok || p == "" {
		return nil
	}
	out := []string{p}
	if _, raw, ok := strings.Cut(u.User.String(), ":"); ok && raw != p {
		out = append(out, raw)
	}
	return out
}

// URLError returns the error that a *url.Error wraps, dropping the URL
// (which may hold a password) that url.Parse quotes in its text. Any other
// error, and nil, it returns unchanged.
func URLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// Error returns err with every occurrence of each secret in its text
// replaced by "xxxxx". If no secret occurs, it returns err itself, so that
// errors.Is and errors.As keep working on it; a redacted error is a new
// error that wraps nothing. Empty secrets are ignored. Error(nil, ...)
// returns nil.
func Error(err error, secrets []string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	changed := false
	for _, s := range secrets {
		if s != "" && strings.Contains(msg, s) {
			msg = strings.ReplaceAll(msg, s, mask)
			changed = true
		}
	}
	if !changed {
		return err
	}
	return errors.New(msg)
}
