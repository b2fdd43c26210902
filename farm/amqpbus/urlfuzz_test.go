package amqpbus_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
)

// FuzzOpenURLSecret builds amqp:// URLs around a password, encoded or not
// (with an unencoded "/", "?", "#" or "@" it may end the host early), and
// checks that Open's error never shows it, as written or decoded.
func FuzzOpenURLSecret(f *testing.F) {
	f.Add("u", "s3cretpw", "127.0.0.1", "/")
	f.Add("u", "s3cret/xy", "127.0.0.1:5672", "/vhost")
	f.Add("u", "12345678/x", "h", "")
	f.Add("", "s3cret?heartbeat=x", "h", "/?heartbeat=2")
	f.Add("u", "s3cret#frag", "h", "/")
	f.Add("u", "pa%zzword", "h", "/")
	f.Add("u", "pass@word", "h", "/v%40h")
	f.Fuzz(func(t *testing.T, user, pass, host, rest string) {
		if len(pass) < 8 || strings.Contains(user+host+rest, pass) {
			return
		}
		b, err := amqpbus.Open("amqp://"+user+":"+pass+"@"+host+rest, "f", nil)
		if err == nil {
			b.Close()
			return
		}
		if strings.Contains(err.Error(), pass) {
			t.Fatalf("Open's error shows the password %q: %v", pass, err)
		}
		if p, uerr := url.PathUnescape(pass); uerr == nil && len(p) >= 8 && p != pass && !strings.Contains(user+host+rest, p) && strings.Contains(err.Error(), p) {
			t.Fatalf("Open's error shows the password %q decoded: %v", pass, err)
		}
	})
}
