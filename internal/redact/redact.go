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
	"regexp"
	"slices"
	"strconv"
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

// Token returns the user name of u when u has no password, decoded and,
// where it differs, as written: NATS takes a lone user name for a token
// (nats://TOKEN@host), a secret. It returns nil if u has a password or no
// user name.
func Token(u *url.URL) []string {
	if u.User == nil {
		return nil
	}
	if _, ok := u.User.Password(); ok || u.User.Username() == "" {
		return nil
	}
	out := []string{u.User.Username()}
	if raw := u.User.String(); raw != out[0] {
		out = append(out, raw)
	}
	return out
}

// ErrStrayAt is CheckAt's error.
var ErrStrayAt = errors.New(`an "@" after the host (in the path, an option's name or the fragment): ` +
	`percent-encode the reserved characters (/ ? # @ and the like) of a user name, password or token`)

// CheckAt returns ErrStrayAt if u has an "@" after its host, in its path,
// the name of a query option, the value of one as written (unencoded) or
// its fragment: the sign of a password or token with an unencoded "/", "?"
// or "#", which url.Parse took for the end of the host. The secret's first
// part is then the host (or, after a user name, its port), and the rest
// the path or the query, and a client library would print either (a
// failed dial names the host, a bad option quotes its value). The value of
// an option whose name ends in "password", "token" or "username" may hold
// an "@" as written (such as a Sentinel URL's password= and username=);
// any value may hold one percent-encoded (%40).
func CheckAt(u *url.URL) error {
	if strings.Contains(u.EscapedPath(), "@") || strings.Contains(u.EscapedFragment(), "@") {
		return ErrStrayAt
	}
	for k := range u.Query() {
		if strings.Contains(k, "@") {
			return ErrStrayAt
		}
	}
	for kv := range strings.SplitSeq(u.RawQuery, "&") {
		k, v, _ := strings.Cut(kv, "=")
		if !strings.Contains(v, "@") {
			continue
		}
		if name, err := url.QueryUnescape(k); err != nil || !credentialName(name) {
			return ErrStrayAt
		}
	}
	return nil
}

// credentialName reports whether a query option of this name holds a
// password, a token (as secretOption matches them) or a user name.
func credentialName(name string) bool {
	name = strings.ToLower(name)
	return strings.HasSuffix(name, "password") || strings.HasSuffix(name, "token") || strings.HasSuffix(name, "username")
}

// URLError returns the reason of a *url.Error without the URL (which may
// hold a password) that url.Parse quotes in its text, and without the
// parts of it that the reason quotes: a password with a reserved
// character left unencoded ends the host early, and url.Parse then
// quotes it as a port ("invalid port \":hunter2\" after host"). Any
// other error, and nil, it returns unchanged.
func URLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return errors.New(dropQuoted(ue.Err.Error()))
	}
	return err
}

// dropQuoted returns s without its Go-quoted strings ("..."), and without
// everything from an unterminated quote on.
func dropQuoted(s string) string {
	var b strings.Builder
	for {
		i := strings.IndexByte(s, '"')
		if i < 0 {
			b.WriteString(s)
			break
		}
		b.WriteString(strings.TrimRight(s[:i], " "))
		q, err := strconv.QuotedPrefix(s[i:])
		if err != nil {
			break
		}
		s = s[i+len(q):]
	}
	return b.String()
}

// secretOption matches the value of a query option that names a password
// or token, such as a Redis Sentinel URL's password (the master's).
// Its value runs to the next option or the fragment: a comma may be part
// of it (a NATS server list has no such option).
var secretOption = regexp.MustCompile(`(?i)([?&;][a-z_]*(?:password|token)=)[^&#]*`)

// URL returns s, a URL or something meant to be one, fit to print: the
// user information of every URL in it (from "://" to the last "@" before
// the next "://", so also a password whose unencoded "/" or "?" would end
// the host early) replaced by "xxxxx", and, with no "://", everything up
// to the last "@"; and so is the value of every query option whose name
// ends in "password" or "token". A NATS token or a user name goes too: text that may
// hold a secret, such as a stray command-line argument or a value in the
// wrong place in a configuration file, is shown this way.
func URL(s string) string {
	s = secretOption.ReplaceAllString(s, "${1}"+mask)
	i := strings.Index(s, "://")
	if i < 0 {
		if at := strings.LastIndexByte(s, '@'); at >= 0 {
			return mask + s[at:]
		}
		return s
	}
	var b strings.Builder
	for i >= 0 {
		b.WriteString(s[:i+3])
		s = s[i+3:]
		i = strings.Index(s, "://") // the next URL's, in s
		part := s
		if i >= 0 {
			part = s[:i]
		}
		if at := strings.LastIndexByte(part, '@'); at >= 0 {
			b.WriteString(mask)
			s = s[at:]
			if i >= 0 {
				i -= at
			}
		}
	}
	b.WriteString(s)
	return b.String()
}

// Error returns err with every occurrence of each secret in its text
// replaced by "xxxxx", the longest secrets first. If no secret occurs, it
// returns err itself, so that errors.Is and errors.As keep working on it;
// a redacted error is a new error that wraps nothing. Empty secrets are
// ignored. Error(nil, ...) returns nil.
func Error(err error, secrets []string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	changed := false
	// The longest first: one secret may hold another (two NATS servers'
	// tokens, a Sentinel URL's two passwords), and masking the shorter
	// first would leave the rest of the longer.
	secrets = slices.Clone(secrets)
	slices.SortStableFunc(secrets, func(a, b string) int { return len(b) - len(a) })
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
