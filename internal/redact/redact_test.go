package redact

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"testing"
)

func TestPasswords(t *testing.T) {
	for raw, want := range map[string][]string{
		"amqp://user:pass@host/":      {"pass"},
		"amqp://user:p%40ss@host/":    {"p@ss", "p%40ss"},
		"nats://user@host:4222":       nil,
		"redis://:@host:6379":         nil,
		"redis://host:6379/0":         nil,
		"rediss://u:s3cr%2Ft@h:6380/": {"s3cr/t", "s3cr%2Ft"},
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := Passwords(u); !slices.Equal(got, want) {
			t.Errorf("Passwords(%s) = %q, want %q", raw, got, want)
		}
	}
}

// TestURLErrorDropsTheURL: url.Parse quotes the whole URL, password and
// all, in its error; URLError keeps only the reason.
func TestURLErrorDropsTheURL(t *testing.T) {
	//lint:ignore SA1007 the URL is invalid on purpose: its parse error is the subject
	_, err := url.Parse("amqp://user:hunter2@host:port/")
	if err == nil || !strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("url.Parse error %v: want one that quotes the password", err)
	}
	if got := URLError(err); strings.Contains(got.Error(), "hunter2") {
		t.Errorf("URLError = %q: shows the password", got)
	}
	if got := URLError(fmt.Errorf("dial: %w", err)); strings.Contains(got.Error(), "hunter2") {
		t.Errorf("URLError of a wrapped url.Error = %q: shows the password", got)
	}
	if URLError(io.EOF) != io.EOF || URLError(nil) != nil {
		t.Error("URLError changed an error that is not a url.Error")
	}
}

func TestError(t *testing.T) {
	err := fmt.Errorf("connect to amqp://u:hunter2@h/ (hunter2): %w", io.EOF)
	got := Error(err, []string{"", "hunter2"})
	if want := "connect to amqp://u:xxxxx@h/ (xxxxx): EOF"; got.Error() != want {
		t.Errorf("Error = %q, want %q", got, want)
	}
	// An error without a secret comes back as itself, so errors.Is works.
	if got := Error(err, []string{"other"}); got != err || !errors.Is(got, io.EOF) {
		t.Errorf("Error without a secret in the text = %v, want the error itself", got)
	}
	if Error(nil, []string{"hunter2"}) != nil {
		t.Error("Error(nil) is not nil")
	}
}

// TestErrorOverlappingSecrets: when one secret holds another (a NATS
// server's token that begins with another server's, a Sentinel URL's
// password option that begins with the sentinels' password), the longer
// must go whole: masking the shorter first left the rest of the longer
// in the text.
func TestErrorOverlappingSecrets(t *testing.T) {
	for _, secrets := range [][]string{
		{"abc", "abcdef"},
		{"abcdef", "abc"},
		{"cdef", "abcdefgh"},
	} {
		err := errors.New("auth failed for abcdefgh and abc")
		got := Error(err, secrets).Error()
		for _, part := range []string{"def", "gh"} {
			if strings.Contains(got, part) && strings.Contains(strings.Join(secrets, " "), part) {
				t.Errorf("Error(%q, %q) = %q: shows part of a secret", err, secrets, got)
			}
		}
	}
}

func TestToken(t *testing.T) {
	for raw, want := range map[string][]string{
		"nats://s3cret@host:4222":    {"s3cret"},
		"nats://s3%2Fcret@host:4222": {"s3/cret", "s3%2Fcret"},
		"nats://user:pass@host:4222": nil,
		"nats://user:@host:4222":     nil,
		"nats://host:4222":           nil,
		"tls://@host:4222":           nil,
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := Token(u); !slices.Equal(got, want) {
			t.Errorf("Token(%s) = %q, want %q", raw, got, want)
		}
	}
}

// TestURLErrorDropsQuotedParts: a password with an unencoded "/", "?" or
// "#" ends the host early, and url.Parse's reason then quotes the password
// as the port; URLError keeps the reason without it. Before the fix it
// returned the reason as it was.
func TestURLErrorDropsQuotedParts(t *testing.T) {
	for _, raw := range []string{
		"redis://:hunter2/x@host:6379",
		"amqp://user:hunter2?x@host/",
		"nats://user:hunter2#x@host:4222",
		"redis://user:pw@host:hunter2",
		"rediss://:p@[::1]:hunter2",
		"nats://hunter2\x7f@host",
	} {
		_, err := url.Parse(raw)
		if err == nil {
			t.Fatalf("url.Parse(%q) succeeded", raw)
		}
		got := URLError(err).Error()
		if strings.Contains(got, "hunter2") || got == "" {
			t.Errorf("URLError(url.Parse(%q)) = %q", raw, got)
		}
		t.Logf("%q: %v", raw, got)
	}
}

// TestURL: whatever holds a URL, or several, is printed without their
// user information, even where a "/" in a password ends the host early.
func TestURL(t *testing.T) {
	for in, want := range map[string]string{
		"redis://127.0.0.1:6379/0":                                     "redis://127.0.0.1:6379/0",
		"redis://:hunter2@h:6379":                                      "redis://xxxxx@h:6379",
		"nats://hunter2@h:4222":                                        "nats://xxxxx@h:4222",
		"nats://hunter2@a:4222,nats://b:4222":                          "nats://xxxxx@a:4222,nats://b:4222",
		"nats://a:4222,tls://u:hunter2@b:4222":                         "nats://a:4222,tls://xxxxx@b:4222",
		"nats://u:hun@ter2@a,nats://x:hunter2@b/@c":                    "nats://xxxxx@a,nats://xxxxx@c",
		"amqp://u:hunter2/x@h/vhost":                                   "amqp://xxxxx@h/vhost",
		"hunter2@h:4222":                                               "xxxxx@h:4222",
		"redis+sentinel://s:26379?master_name=m&password=hunter2&db=1": "redis+sentinel://s:26379?master_name=m&password=xxxxx&db=1",
		"redis+sentinel://s?Sentinel_Password=hunter2#x":               "redis+sentinel://s?Sentinel_Password=xxxxx#x",
		"8443": "8443",
		"":     "",
		// A "://" in a password is not the start of another URL: no
		// separator comes before its scheme.
		"redis://u:pa://hunter2@h:6379":        "redis://xxxxx@h:6379",
		"redis://:x://y://hunter2@h,redis://k": "redis://xxxxx@h,redis://k",
		"a (redis://:hunter2@h) b":             "a (redis://xxxxx@h) b",
		// An option's name may be percent-encoded, and its value may hold
		// an unencoded "&" or ";" that starts no other option.
		"redis+sentinel://s?pass%77ord=hunter2&db=1":       "redis+sentinel://s?pass%77ord=xxxxx&db=1",
		"redis+sentinel://s?password=hun&ter2&db=1":        "redis+sentinel://s?password=xxxxx&db=1",
		"redis+sentinel://s?password=hun;ter2":             "redis+sentinel://s?password=xxxxx",
		"redis+sentinel://s?db=1;sentinel_token=hunter2#f": "redis+sentinel://s?db=1;sentinel_token=xxxxx#f",
		// net/url separates options at "&" only: a ";" and what follows
		// it, even "x=y", are part of the value (the old code masked them).
		"redis+sentinel://s?sentinel_password=hun;ter=2&db=1": "redis+sentinel://s?sentinel_password=xxxxx&db=1",
		// A password with an unencoded "&" and "name=" where the name ends
		// in "token" or "password": the option's masked value holds the
		// "@" that ended the user information, and all before it goes.
		"redis://u:pw&x-token=1@h":         "redis://xxxxx",
		"u:pw&pass%77ord=1@h":              "xxxxx",
		"redis://u:p@h?x.password=a@b&c=1": "redis://xxxxx&c=1",
		// A masked option value that held the text's first "://": the
		// text before the next URL is text without one.
		"?x-token=a://b#u:pw@h, redis://k": "xxxxx@h, redis://k",
		"redis://h/0?dial_timeout=5s":      "redis://h/0?dial_timeout=5s",
	} {
		if got := URL(in); got != want {
			t.Errorf("URL(%q) = %q, want %q", in, got, want)
		}
	}
}
