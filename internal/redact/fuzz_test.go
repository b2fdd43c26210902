package redact

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzURL checks that URL of any text that url.Parse takes for a URL with
// a password keeps none of it, decoded or as written: the password occurs
// in URL's result no more often than in the text without its user
// information (where it may be part of the host or the path, say).
// Sentinel passwords in query options are checked the same way.
func FuzzURL(f *testing.F) {
	for _, s := range []string{
		"redis://:hunter2@h:6379",
		"nats://u:hun@ter2@a,nats://x:hunter2@b/@c",
		"amqp://u:hunter2/x@h/vhost",
		"redis://u:pa://hunter2@h:6379",
		"redis+sentinel://s?pass%77ord=hunter2&db=1",
		"redis://u:p%40ss@h",
		"a (redis://:hunter2@h) b",
		"redis://u:pw&x-token=1@h",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := URL(s)
		u, err := url.Parse(s)
		if err != nil {
			return
		}
		// The mask, which may join with the text around it, counts as a
		// byte that no password holds.
		count := func(text, secret string) int {
			return strings.Count(strings.ReplaceAll(text, mask, "\x00"), secret)
		}
		check := func(rest, secret string) {
			if secret == "" || strings.Contains(secret, "\x00") {
				return
			}
			if count(out, secret) > count(rest, secret) {
				t.Fatalf("URL(%q) = %q: the password %q is in it", s, out, secret)
			}
		}
		if u.User != nil {
			// The user information as written: after "//", up to the
			// last "@" before the end of the authority.
			i := strings.Index(s, "//")
			auth := s[i+2:]
			if j := strings.IndexAny(auth, "/?#"); j >= 0 {
				auth = auth[:j]
			}
			at := strings.LastIndex(auth, "@")
			if at < 0 {
				t.Fatalf("url.Parse(%q) found user information in no %q", s, auth)
			}
			userinfo := auth[:at]
			// URL's result keeps the "@" after its mask, and a
			// password may be that "@" or begin with it.
			rest := s[:i+2] + "\x00@" + s[i+2+at+1:]
			if p, ok := u.User.Password(); ok {
				check(rest, p)
				_, written, _ := strings.Cut(userinfo, ":")
				check(rest, written)
			}
		}
		// The text without the secret options' values as written: a
		// value may occur elsewhere too (in the path, say), where it is
		// no password and stays.
		qrest := s
		if q := strings.IndexByte(s, '?'); q >= 0 && u.RawQuery != "" && strings.HasPrefix(s[q+1:], u.RawQuery) {
			var kept []string
			for _, pair := range strings.Split(u.RawQuery, "&") {
				k, _, _ := strings.Cut(pair, "=")
				if name, err := url.QueryUnescape(k); err == nil && secretName(name) {
					pair = k + "="
				}
				kept = append(kept, pair)
			}
			qrest = s[:q+1] + strings.Join(kept, "&") + s[q+1+len(u.RawQuery):]
		}
		for k, vs := range u.Query() {
			if !secretName(k) {
				continue
			}
			for _, v := range vs {
				check(qrest, v)
			}
		}
	})
}
