package config

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/internal/redact"
	"github.com/tlsfarm/tlsfarm/internal/secretfile"
	"github.com/tlsfarm/tlsfarm/session"
)

// minClientTimeout is the shortest limits.handshake_timeout and
// limits.idle_timeout accepted.
const minClientTimeout = 100 * time.Millisecond

// minTokenLen is the shortest admin bearer token accepted.
const minTokenLen = 16

// validate checks every setting and loads the files the configuration
// names: the certificates (into Certificate.Loaded), the farm secrets (into
// Farm.Secrets) and the admin token (into Admin.BearerToken). It returns
// the first problem as an error of one line that names the setting.
func (c *Config) validate() error {
	for _, check := range []func() error{c.checkLog, c.checkListeners, c.checkCache, c.checkFarm, c.checkTickets, c.checkAdmin, c.checkLimits} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// problem returns the error for a bad setting.
func (c *Config) problem(key, format string, args ...any) error {
	msg := strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " ")
	return fmt.Errorf("%s%s: %s", key, c.where(key), msg)
}

func (c *Config) checkLog() error {
	if c.Log.Format != "text" && c.Log.Format != "json" {
		return c.problem("log.format", "%q is not text or json", redact.URL(c.Log.Format))
	}
	if _, err := ParseLevel(c.Log.Level); err != nil {
		return c.problem("log.level", "%v", err)
	}
	return nil
}

// ParseLevel parses a log level: debug, info, warn or error.
// Case does not matter. log/slog's offsets ("info+8") are refused: one
// above error would silence every line.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%q is not debug, info, warn or error", redact.URL(s))
}

func (c *Config) checkListeners() error {
	seen := map[string]int{}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		key := fmt.Sprintf("listeners[%d]", i)
		if err := checkHostPort(l.Address); err != nil {
			return c.problem(key+".address", "%v", err)
		}
		if j, dup := seen[l.Address]; dup {
			return c.problem(key+".address", "%s is also listeners[%d].address", redact.URL(l.Address), j)
		}
		seen[l.Address] = i
		for j := range l.Certificates {
			if err := c.loadCertificate(&l.Certificates[j], fmt.Sprintf("%s.certificates[%d]", key, j)); err != nil {
				return err
			}
		}
		min, err := ParseVersion(l.MinVersion)
		if err != nil {
			return c.problem(key+".min_version", "%v", err)
		}
		max, err := ParseVersion(l.MaxVersion)
		if err != nil {
			return c.problem(key+".max_version", "%v", err)
		}
		if min > max {
			return c.problem(key+".min_version", "%s is above max_version %s", l.MinVersion, l.MaxVersion)
		}
		if err := checkUpstream(l.Upstream); err != nil {
			return c.problem(key+".upstream", "%v", err)
		}
		for _, p := range l.ALPN {
			if p == "" || len(p) > 255 {
				return c.problem(key+".alpn", "protocol names are 1 to 255 bytes")
			}
			if !isTCP(l.Upstream) && p != "h2" && p != "http/1.1" {
				return c.problem(key+".alpn", "%q is not h2 or http/1.1, the protocols an HTTP upstream speaks", redact.URL(p))
			}
		}
		if l.HTTP3 && isTCP(l.Upstream) {
			return c.problem(key+".http3", "HTTP/3 needs an HTTP upstream, not %s", l.Upstream)
		}
		if l.EarlyData && !l.HTTP3 {
			return c.problem(key+".early_data", "early data is only accepted over HTTP/3: set http3 too")
		}
		if l.ProxyProtocol.Enabled && len(l.ProxyProtocol.Trusted) == 0 {
			return c.problem(key+".proxy_protocol.trusted", "is required with proxy_protocol.enabled: without it any client can send a PROXY header and claim any address; list the balancers' addresses or ranges (0.0.0.0/0 and ::/0 trust every sender, explicitly)")
		}
		for _, t := range l.ProxyProtocol.Trusted {
			if _, err := netip.ParsePrefix(t); err == nil {
				continue
			}
			if _, err := netip.ParseAddr(t); err != nil {
				return c.problem(key+".proxy_protocol.trusted", "%q is not an IP address or CIDR range", redact.URL(t))
			}
		}
		if len(l.EarlyDataTrusted) > 0 && isTCP(l.Upstream) {
			return c.problem(key+".early_data_trusted", "is for HTTP upstreams: a tcp:// upstream gets the decrypted bytes as the client sent them, Early-Data headers and all")
		}
		for _, t := range l.EarlyDataTrusted {
			if p, err := netip.ParsePrefix(t); err == nil && p.Addr().Zone() == "" {
				continue
			}
			if a, err := netip.ParseAddr(t); err != nil || a.Zone() != "" {
				return c.problem(key+".early_data_trusted", "%q is not an IP address or CIDR range (list the intermediaries' addresses, such as 203.0.113.0/24: the PROXY header's client address with proxy_protocol, the connection's peer without)", redact.URL(t))
			}
		}
	}
	return nil
}

func checkHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", redact.URL(addr))
	}
	if port == "" {
		return fmt.Errorf("%q has no port", redact.URL(addr))
	}
	return nil
}

func (c *Config) checkCache() error {
	mode, err := session.ParseMode(c.Cache.Mode)
	if err != nil {
		return c.problem("cache.mode", "%q is not stateful, stateless or mixed", redact.URL(c.Cache.Mode))
	}
	if mode == session.Stateless && c.Cache.SingleUse {
		// A stateless ticket is held nowhere, so it cannot be retired.
		return c.problem("cache.single_use", "needs cache.mode stateful or mixed: a stateless ticket cannot be retired")
	}
	switch {
	case c.Cache.Size < 1:
		return c.problem("cache.size", "must be at least 1")
	case c.Cache.Buckets < 1 || c.Cache.Buckets > 1<<16:
		return c.problem("cache.buckets", "must be 1 to 65536")
	case c.Cache.Lifetime <= 0:
		return c.problem("cache.lifetime", "must be positive")
	case c.Cache.MaxChainLifetime < c.Cache.Lifetime:
		return c.problem("cache.max_chain_lifetime", "%v is shorter than cache.lifetime %v", c.Cache.MaxChainLifetime, c.Cache.Lifetime)
	}
	return nil
}

func (c *Config) checkFarm() error {
	f := &c.Farm
	if f.URL == "" {
		if f.Strict {
			// Strict promises no start without the farm: without a farm
			// URL (an empty variable counts as unset) the node would
			// serve alone, and pass /readyz.
			return c.problem("farm.strict", "is set, but farm.url is not: a strict node must join a farm")
		}
		// Any other farm setting without a URL: the node would serve
		// alone, sharing nothing, while its operator believes it in a
		// farm (a URL variable left out of one node's environment, a
		// url line commented out). Serving alone is said by giving no
		// farm setting at all.
		if set := c.setUnder("farm.", "farm.url"); len(set) > 0 {
			return c.problem(set[0], "is set, but farm.url is not: without farm.url the node serves alone and every farm setting is ignored; set farm.url, or remove %s to serve alone", strings.Join(set, ", "))
		}
		return nil
	}
	scheme, err := checkFarmURL(f.URL)
	if err != nil {
		return c.problem("farm.url", "%v", err)
	}
	if f.Name == "" || len(f.Name) > 64 {
		return c.problem("farm.name", "must be 1 to 64 bytes")
	}
	mode, err := farm.ParseMode(f.Mode)
	if err != nil {
		return c.problem("farm.mode", "%q is not broadcast or store-only", redact.URL(f.Mode))
	}
	if !HasStore(scheme) {
		if mode == farm.StoreOnly {
			return c.problem("farm.mode", "store-only needs a transport with a store (redis or nats), not %s", scheme)
		}
		if f.WriteThrough {
			return c.problem("farm.write_through", "needs a transport with a store (redis or nats), not %s", scheme)
		}
	}
	if f.CarrySessions {
		switch {
		case !f.WriteThrough:
			return c.problem("farm.carry_sessions", "needs farm.write_through: a carried session spares the wait write-through makes for a young session")
		case mode != farm.Broadcast:
			return c.problem("farm.carry_sessions", "needs farm.mode broadcast, not %s", mode)
		case c.Cache.SingleUse:
			return c.problem("farm.carry_sessions", "cannot go with cache.single_use: a single-use session is claimed in the store, never taken from a ticket")
		}
	}
	if f.MaxDeliveryLag <= 0 || f.MaxDeliveryLag > 10*time.Second {
		return c.problem("farm.max_delivery_lag", "must be above 0 and at most 10s: every revocation waits this long before it reports applied")
	}
	if f.LookupDeadline <= 0 || f.LookupDeadline > time.Second {
		return c.problem("farm.lookup_deadline", "must be above 0 and at most 1s: a handshake waits this long")
	}
	switch {
	case f.FlushWindow < 0:
		return c.problem("farm.flush_window", "must not be negative (0 shares each new session at once)")
	case f.FlushWindow > farm.MaxFlushWindow:
		return c.problem("farm.flush_window", "%v is over %v: peers and the store would learn of new sessions that much later, and clients resuming them elsewhere meanwhile would get full handshakes", f.FlushWindow, farm.MaxFlushWindow)
	case f.WriteThrough && 2*f.FlushWindow > f.LookupDeadline:
		return c.problem("farm.flush_window", "%v is over half of farm.lookup_deadline (%v): with write-through a node presented a young session it lacks waits for the window too, within the lookup deadline", f.FlushWindow, f.LookupDeadline)
	}
	if f.ConnectTimeout <= 0 {
		return c.problem("farm.connect_timeout", "must be positive")
	}
	if f.SecretFile == "" {
		return c.problem("farm.secret_file", "is required with farm.url (make one with: tlsfarm keygen -out FILE)")
	}
	f.Secrets, err = farm.LoadSecrets(f.SecretFile)
	if err != nil {
		return c.problem("farm.secret_file", "%v", err)
	}
	// Read at start: a pipe or a device there would block it.
	if path := f.RevocationFile; path != "" {
		for _, p := range []string{path, path + ".lifecycle", path + ".journal", path + ".sent", path + ".sent.journal"} {
			if fi, err := os.Stat(p); err == nil && !fi.Mode().IsRegular() {
				return c.problem("farm.revocation_file", "%s is not a regular file", p)
			}
		}
	}
	return nil
}

func (c *Config) checkTickets() error {
	switch {
	case c.Tickets.RotationInterval < time.Second:
		return c.problem("tickets.rotation_interval", "must be at least 1s (under 1m is for trials and tests)")
	case c.Tickets.Keep < 1:
		return c.problem("tickets.keep", "must be at least 1, or tickets stop resuming the moment their key rotates out")
	case c.Tickets.Keep > 16:
		return c.problem("tickets.keep", "%d is too many: every kept key costs each unknown ticket one more HMAC (at most 16)", c.Tickets.Keep)
	}
	return nil
}

func (c *Config) checkAdmin() error {
	a := &c.Admin
	if a.Address != "off" {
		if err := checkHostPort(a.Address); err != nil {
			return c.problem("admin.address", "%v (or off)", err)
		}
		// Both would bind it: the listener first, and then the admin
		// API's bind fails, after the start has begun serving.
		if _, port, _ := net.SplitHostPort(a.Address); port != "0" {
			for i, l := range c.Listeners {
				if l.Address == a.Address {
					return c.problem("admin.address", "%s is also listeners[%d].address", redact.URL(a.Address), i)
				}
			}
		}
	}
	a.BearerToken = a.Token
	if a.TokenFile != "" {
		if a.Token != "" {
			key := "admin.token"
			if _, ok := c.sources[key]; !ok {
				key = "admin.token_file"
			}
			return c.problem(key, "give admin.token or admin.token_file, not both")
		}
		tok, err := readTokenFile(a.TokenFile)
		if err != nil {
			return c.problem("admin.token_file", "%v", err)
		}
		if tok == "" {
			// Not "no token": a file named for the token that holds none
			// is one truncated or not yet written (a reload racing the
			// write), and a shorter token is refused too.
			return c.problem("admin.token_file", "%s holds no token (it is empty or blank); use at least %d bytes (for example: head -c 32 /dev/urandom | base64)", a.TokenFile, minTokenLen)
		}
		a.BearerToken = tok
	}
	key := "admin.token"
	if a.TokenFile != "" {
		key = "admin.token_file"
	}
	if a.BearerToken != "" && len(a.BearerToken) < minTokenLen {
		return c.problem(key, "the token is %d bytes; use at least %d (for example: head -c 32 /dev/urandom | base64)", len(a.BearerToken), minTokenLen)
	}
	if i := unsendableAt(a.BearerToken); i >= 0 {
		// No client can send it: an Authorization header ends at a line
		// break and carries no other control character, so every state
		// change would be refused with 401. Base64 wrapped at 76 columns (head -c 64 | base64)
		// is the usual way to get one.
		return c.problem(key, "the token has a line break or another control character (byte %d): no Authorization header can carry it (base64 output wrapped over lines? use base64 -w0)", i)
	}
	return nil
}

// unsendableAt returns the index of the first byte of tok that no HTTP
// client can send as part of a bearer token, a control character (a line
// break among them), or -1. (Blanks at its ends are trimmed as it loads.)
func unsendableAt(tok string) int {
	return strings.IndexFunc(tok, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// setUnder returns, sorted, the settings under prefix (such as "farm.")
// that the file, the environment or a flag gave, but except.
func (c *Config) setUnder(prefix, except string) []string {
	var keys []string
	for k := range c.sources {
		if strings.HasPrefix(k, prefix) && k != except {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// readTokenFile reads a bearer token from a file that only its owner can
// read.
func readTokenFile(path string) (string, error) {
	// A pipe or a device would block the start, or a reload, or never end.
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	b, err := secretfile.Read(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func (c *Config) checkLimits() error {
	l := c.Limits
	switch {
	// Below these floors no client on a real network gets through: a
	// value such as 10ms is likely meant as seconds.
	case l.HandshakeTimeout < minClientTimeout:
		return c.problem("limits.handshake_timeout", "%v is under %v: no handshake over a network finishes in time", l.HandshakeTimeout, minClientTimeout)
	case l.IdleTimeout < minClientTimeout:
		return c.problem("limits.idle_timeout", "%v is under %v: clients would be cut between their requests, and while they send them", l.IdleTimeout, minClientTimeout)
	case l.DrainTimeout <= 0:
		// 0 could be read as "no drain" or as "no limit"; neither is
		// what a stop should do by accident.
		return c.problem("limits.drain_timeout", "must be positive: it bounds how long a stop waits for open connections (there is no unbounded wait; 1ms closes them at once)")
	}
	return nil
}
