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

// URL returns s, a URL or something meant to be one, fit to print: the
// user information of every URL in it replaced by "xxxxx", and, with no
// "://", everything up to the last "@" (so too before the first URL); and
// so is the value of every query option whose name, percent-decoded, ends
// in "password" or "token". A NATS token or a user name goes too: text
// that may hold a secret, such as a stray command-line argument or a value
// in the wrong place in a configuration file, is shown this way.
//
// The user information of a URL runs from its "://" to the last "@" before
// the next URL (one in the value of a masked option included: the option
// may be part of a password with an unencoded "?" or "&"), so a password
// whose unencoded "/" or "?" would end the host early goes whole. The next
// URL starts at a "://" only after a separator (a comma, a semicolon, a
// space or the start of the text) and its scheme; any other "://" (one in
// a password) is part of the URL before it. An option's value runs to the
// next "&" that starts another option with "=", or to the fragment: an
// unencoded "&" in a password does not end it.
func URL(s string) string {
	s, ats := maskOptions(s)
	starts := urlStarts(s)
	if len(starts) == 0 {
		if at := lastAt(s, 0, len(s), ats); at >= 0 {
			return mask + s[at:]
		}
		return s
	}
	var b strings.Builder
	// The text before the first URL is text without one.
	pre := schemeStart(s, starts[0]-3)
	if at := lastAt(s, 0, pre, ats); at >= 0 {
		b.WriteString(mask)
		b.WriteString(s[at:starts[0]])
	} else {
		b.WriteString(s[:starts[0]])
	}
	for k, start := range starts {
		end := len(s)
		if k+1 < len(starts) {
			end = schemeStart(s, starts[k+1])
		}
		part := s[start:end]
		if at := lastAt(s, start, end, ats); at >= 0 {
			b.WriteString(mask)
			part = s[at:end]
		}
		b.WriteString(part)
	}
	return b.String()
}

// lastAt returns the index in s of the last "@" in s[start:end], or, if
// later, the end of the last masked option value in it (ats, from
// maskOptions) that held an "@": an option's name may be part of a
// password (one with an unencoded "?" or "&"), and its value the rest of
// the password up to the host. It returns -1 if there is neither.
func lastAt(s string, start, end int, ats []int) int {
	at := strings.LastIndexByte(s[start:end], '@')
	if at >= 0 {
		at += start
	}
	for _, a := range ats {
		if a > start && a <= end && a > at {
			at = a
		}
	}
	return at
}

// urlStarts returns the index just after each "://" in s that begins a
// URL: the first one, and each later one whose scheme follows a separator.
func urlStarts(s string) []int {
	var out []int
	for i := 0; ; {
		j := strings.Index(s[i:], "://")
		if j < 0 {
			return out
		}
		j += i
		if len(out) == 0 || separated(s, schemeStart(s, j)) {
			out = append(out, j+3)
		}
		i = j + 3
	}
}

// schemeStart returns where the scheme ending at s[end] (just before a
// "://") begins: the run of letters, digits, "+", "-" and "." before it.
func schemeStart(s string, end int) int {
	i := end
	for i > 0 {
		c := s[i-1]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '+' || c == '-' || c == '.' {
			i--
			continue
		}
		break
	}
	return i
}

// separated reports whether s[i] begins a new word: it is the start of s or
// follows a comma, a semicolon, white space or a quote.
func separated(s string, i int) bool {
	if i == 0 {
		return true
	}
	return strings.IndexByte(", ;\t\n\"'(", s[i-1]) >= 0
}

// maskOptions replaces the value of every query option of s whose name,
// percent-decoded, ends in "password" or "token" (any case), such as a
// Redis Sentinel URL's password (the master's), with "xxxxx". The value
// runs to the fragment or to the next "&" that starts an option with a
// "=": a comma may be part of it (a NATS server list has no such option),
// and so may an unencoded "&" and a ";" (net/url separates options at "&"
// only: in "password=a;b=c", "b=c" is no option but the password's end).
// It also returns the index in its result just after each masked value
// that held an "@".
func maskOptions(s string) (string, []int) {
	var b strings.Builder
	var ats []int
	i := 0
	for i < len(s) {
		j := strings.IndexAny(s[i:], "?&;")
		if j < 0 {
			break
		}
		j += i
		name, value := optionAt(s, j+1)
		if value < 0 || !secretName(name) {
			b.WriteString(s[i : j+1])
			i = j + 1
			continue
		}
		b.WriteString(s[i:value])
		b.WriteString(mask)
		i = valueEnd(s, value)
		if strings.IndexByte(s[value:i], '@') >= 0 {
			ats = append(ats, b.Len())
		}
	}
	b.WriteString(s[i:])
	return b.String(), ats
}

// optionAt returns the name of the option that starts at s[i] and the
// index of its value, or -1 if no "=" follows the name.
func optionAt(s string, i int) (name string, value int) {
	k := strings.IndexAny(s[i:], "=&;#?/@ ")
	if k < 0 || s[i+k] != '=' {
		return "", -1
	}
	return s[i : i+k], i + k + 1
}

// valueEnd returns where the option value that starts at s[i] ends.
func valueEnd(s string, i int) int {
	for {
		k := strings.IndexAny(s[i:], "&#")
		if k < 0 {
			return len(s)
		}
		k += i
		if s[k] == '#' {
			return k
		}
		if _, v := optionAt(s, k+1); v >= 0 {
			return k
		}
		i = k + 1
	}
}

// secretName reports whether a query option of this name, as written,
// holds a password or a token.
func secretName(name string) bool {
	if u, err := url.QueryUnescape(name); err == nil {
		name = u
	}
	name = strings.ToLower(name)
	return strings.HasSuffix(name, "password") || strings.HasSuffix(name, "token")
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
