package redisbus_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/redisbus"
)

// FuzzOpenURL builds farm URLs of each redis scheme around a password,
// encoded or not, with arbitrary options after the host, and checks Open
// (which parses the URL and go-redis's options from it, and connects
// nowhere until used): no panic (go-redis panics on some options it
// parses, such as a negative pool_size), and an error never shows the
// password, as written or decoded. What opens is closed.
func FuzzOpenURL(f *testing.F) {
	f.Add(uint8(0), "u", "s3cretpw", "127.0.0.1:6379", "/0")
	f.Add(uint8(1), "", "s3cret/xy", "127.0.0.1:6380", "/?pool_size=-1")
	f.Add(uint8(2), "", "12345678", "127.0.0.1:7000", "?reload=2s&wait_replicas=1&wait_timeout=50ms")
	f.Add(uint8(3), "u", "s3cret?master_name=m", "127.0.0.1:26379", "?master_name=m&route_randomly=true")
	f.Add(uint8(3), "", "pass@word", "h:26379", "?master_name=m&password=pass%40word&db=pass%40word")
	f.Add(uint8(0), "u", "pa%zzword", "h", "/x?echo=maybe")
	f.Add(uint8(2), "u", "s3cret#frag", "h:7000", "/1")
	schemes := []string{"redis", "rediss", "redis+cluster", "redis+sentinel", "rediss+cluster", "rediss+sentinel", "redis+other"}
	f.Fuzz(func(t *testing.T, scheme uint8, user, pass, host, rest string) {
		raw := schemes[int(scheme)%len(schemes)] + "://" + user + ":" + pass + "@" + host + rest
		tr, err := redisbus.Open(raw, "f")
		if err == nil {
			tr.Close()
			return
		}
		if len(pass) < 8 || strings.Contains(user+host+rest, pass) {
			return
		}
		if strings.Contains(err.Error(), pass) {
			t.Fatalf("Open(%q)'s error shows the password %q: %v", raw, pass, err)
		}
		if p, uerr := url.PathUnescape(pass); uerr == nil && len(p) >= 8 && p != pass && !strings.Contains(user+host+rest, p) && strings.Contains(err.Error(), p) {
			t.Fatalf("Open(%q)'s error shows the password %q decoded: %v", raw, p, err)
		}
	})
}
