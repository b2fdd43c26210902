package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"slices"
	"strings"

	"github.com/tlsfarm/tlsfarm/internal/redact"
)

// isTCP reports whether upstream is a tcp:// passthrough.
func isTCP(upstream string) bool { return strings.HasPrefix(upstream, "tcp://") }

// checkUpstream checks an upstream: "builtin", an http:// or https:// URL,
// or tcp://host:port. An upstream URL may not hold credentials; errors show
// it with any password masked (url.URL.Redacted), and one that does not
// parse not at all.
func checkUpstream(s string) error {
	if s == "builtin" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("is not a URL (want builtin, http://host:port, https://host:port or tcp://host:port)")
	}
	shown := u.Redacted()
	if !strings.HasPrefix(s, u.Scheme) {
		// url.Parse lowers the scheme; the proxy reads it as written.
		return fmt.Errorf("%q: write the scheme in lower case (%s://)", shown, u.Scheme)
	}
	if u.User != nil {
		return fmt.Errorf("%q: credentials in an upstream URL are not supported", shown)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return fmt.Errorf("%q has no host", shown)
		}
	case "tcp":
		if err := checkHostPort(u.Host); err != nil {
			return fmt.Errorf("%q: %v", shown, err)
		}
		if u.Path != "" && u.Path != "/" {
			return fmt.Errorf("%q: a tcp:// upstream has no path", shown)
		}
	default:
		return fmt.Errorf("%q is not builtin or an http://, https:// or tcp:// URL", shown)
	}
	return nil
}

// Farm transport schemes, by whether the transport has a store.
var farmSchemes = map[string]bool{
	"redis": true, "rediss": true,
	"redis+cluster": true, "rediss+cluster": true,
	"redis+sentinel": true, "rediss+sentinel": true,
	"nats": true, "tls": true,
	"amqp": false, "amqps": false,
}

// HasStore reports whether the farm transport of the given URL scheme
// keeps a store (for lookups on a miss, write-through, store-only mode and
// ticket key rotation), as Redis and NATS do and AMQP does not.
func HasStore(scheme string) bool { return farmSchemes[scheme] }

// checkFarmURL checks a farm transport URL and returns its scheme. NATS
// takes several servers of one cluster, comma-separated. A query option
// may be given once (a Redis URL's addr excepted). The URL may hold a
// password: errors never repeat it.
func checkFarmURL(s string) (string, error) {
	scheme := ""
	given := map[string]int{} // how often each URL option appears
	for _, part := range strings.Split(s, ",") {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil {
			return "", fmt.Errorf("not a URL (want redis://host:6379, nats://host:4222, amqp://host:5672...)")
		}
		if !strings.HasPrefix(strings.TrimSpace(part), u.Scheme) {
			// url.Parse lowers the scheme; the daemon picks the
			// transport by the scheme as written.
			return "", fmt.Errorf("write the scheme in lower case (%s://)", u.Scheme)
		}
		if _, ok := farmSchemes[u.Scheme]; !ok {
			return "", fmt.Errorf("unsupported scheme %q (want redis, rediss, redis+cluster, redis+sentinel, nats, tls, amqp or amqps)", u.Scheme)
		}
		if scheme != "" && (!isNATS(scheme) || !isNATS(u.Scheme)) {
			return "", fmt.Errorf("only nats:// and tls:// URLs may list several servers, comma-separated")
		}
		if scheme != "" && u.Scheme != scheme {
			// A connection is plain or TLS, whichever server it reaches.
			return "", fmt.Errorf("the servers of a NATS URL share one scheme: %s:// and %s:// are mixed", scheme, u.Scheme)
		}
		scheme = u.Scheme
		if err := redact.CheckAt(u); err != nil {
			return "", fmt.Errorf("%s URL: %v", u.Scheme, err)
		}
		// As the transports do (a repeat was once taken silently, the
		// first value or the last): an option once in the whole URL,
		// but the servers (addr) of a Redis Cluster or Sentinel URL.
		for _, k := range slices.Sorted(maps.Keys(u.Query())) {
			if given[k] += len(u.Query()[k]); given[k] > 1 && (k != "addr" || !strings.HasPrefix(scheme, "redis")) {
				return "", fmt.Errorf("%s URL option %q is given %d times: give it once", u.Scheme, k, given[k])
			}
		}
		if u.Host == "" {
			return "", fmt.Errorf("%s URL has no host", u.Scheme)
		}
		if _, _, err := net.SplitHostPort(u.Host); err != nil && !strings.Contains(err.Error(), "missing port") {
			return "", fmt.Errorf("%s URL has a bad host", u.Scheme)
		}
	}
	return scheme, nil
}

func isNATS(scheme string) bool { return scheme == "nats" || scheme == "tls" }
