package natsbus

import (
	"net/url"
	"slices"
	"strings"
	"testing"
)

// FuzzParseURL builds nats:// URLs (one or two servers) around a password
// or a token, encoded or not, with options, and checks parseURL (what Open
// and CheckURL read a farm URL with): no panic; an error never shows the
// password or token, as written or decoded; an accepted URL gives one
// server per comma-separated part, each without its query, of scheme nats
// or tls, its password or token among the secrets to redact, and options
// within their bounds.
func FuzzParseURL(f *testing.F) {
	f.Add("u", "s3cretpw", "127.0.0.1:4222", "", false)
	f.Add("", "t0kent0ken", "127.0.0.1:4222", "?replicas=3", false)
	f.Add("u", "s3cret/xy", "h:4222", ",nats://h2:4222?pending_msgs=-1", false)
	f.Add("u", "pa%zzword", "h", "?replicas=9", true)
	f.Add("u", "pass@word", "h", "?pending_bytes=0&replicas=1", false)
	f.Add("u", "s3cret?replicas=2", "h", "?replicas=2", false)
	f.Add("u", "s3cret#frag", "h", "", true)
	f.Fuzz(func(t *testing.T, user, pass, host, rest string, tlsScheme bool) {
		scheme := "nats://"
		if tlsScheme {
			scheme = "tls://"
		}
		cred := user + ":" + pass
		if user == "" {
			cred = pass // a lone user name: a token
		}
		raw := scheme + cred + "@" + host + rest
		servers, secrets, opts, err := parseURL(raw, &Options{})
		if err != nil {
			if len(pass) < 8 || strings.Contains(user+host+rest, pass) {
				return
			}
			if strings.Contains(err.Error(), pass) {
				t.Fatalf("parseURL(%q)'s error shows the secret %q: %v", raw, pass, err)
			}
			if p, uerr := url.PathUnescape(pass); uerr == nil && len(p) >= 8 && p != pass && !strings.Contains(user+host+rest, p) && strings.Contains(err.Error(), p) {
				t.Fatalf("parseURL(%q)'s error shows the secret %q decoded: %v", raw, p, err)
			}
			return
		}
		if len(servers) != strings.Count(raw, ",")+1 {
			t.Fatalf("parseURL(%q) gave %d servers", raw, len(servers))
		}
		for _, s := range servers {
			u, err := url.Parse(s)
			if err != nil {
				t.Fatalf("parseURL(%q) gave server %q, which does not parse: %v", raw, s, err)
			}
			if u.RawQuery != "" || (u.Scheme != "nats" && u.Scheme != "tls") || u.Host == "" {
				t.Fatalf("parseURL(%q) gave server %q", raw, s)
			}
			if p, ok := u.User.Password(); ok && p != "" && !slices.Contains(secrets, p) {
				t.Fatalf("parseURL(%q): server %q's password is not among the secrets %q", raw, s, secrets)
			}
			if _, ok := u.User.Password(); !ok && u.User != nil && u.User.Username() != "" && !slices.Contains(secrets, u.User.Username()) {
				t.Fatalf("parseURL(%q): server %q's token is not among the secrets %q", raw, s, secrets)
			}
		}
		if opts.Replicas < 0 || opts.Replicas > 5 || opts.PendingMsgs < -1 || opts.PendingBytes < -1 {
			t.Fatalf("parseURL(%q) gave options %+v", raw, *opts)
		}
	})
}
