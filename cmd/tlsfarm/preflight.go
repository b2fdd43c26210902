package main

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/tlsfarm/tlsfarm/config"
	"github.com/tlsfarm/tlsfarm/internal/ipprefix"
)

// configWarnings returns what serve warns about in a valid configuration:
// combinations that work, but not as an operator may expect. serve logs
// them at start; check prints them.
func configWarnings(cfg *config.Config) []string {
	var w []string
	if cfg.Farm.URL != "" && cfg.Cache.Mode != "stateful" {
		scheme, _, _ := strings.Cut(cfg.Farm.URL, "://")
		if !config.HasStore(scheme) {
			w = append(w, fmt.Sprintf("cache.mode %s with the %s farm transport, which has no store: ticket keys are each node's own, so stateless tickets resume only on the node that issued them",
				cfg.Cache.Mode, transportName(cfg.Farm.URL)))
		}
	}
	if amqpHeartbeatOff(cfg.Farm.URL) {
		w = append(w, "farm.url sets heartbeat=0: the broker's heartbeat interval applies instead (RabbitMQ's default is 60s, and none if the broker's is 0 too), so a dead broker or a broken network goes unnoticed for a minute and a half or more, or until TCP gives up, rather than about 10s; leave heartbeat out for the bus's 5s")
	}
	if w1 := replicasUnwaited(cfg); w1 != "" {
		w = append(w, w1)
	}
	if cfg.Tickets.RotationInterval < time.Minute {
		w = append(w, fmt.Sprintf("tickets.rotation_interval %s is under 1m: fine for a trial or a test, too short for production (tickets live only keep+1 intervals)",
			cfg.Tickets.RotationInterval))
	}
	if keys := cfg.FileSecrets(); len(keys) > 0 {
		if fi, err := os.Stat(cfg.File); err == nil && fi.Mode().Perm()&0o004 != 0 {
			w = append(w, fmt.Sprintf("config file %s gives a secret (%s) and every user may read it (mode %04o): run chmod o-r %s, or give the secret in the environment or a file of its own",
				cfg.File, strings.Join(keys, ", "), fi.Mode().Perm(), cfg.File))
		}
	}
	if cfg.Debug.ExposeSessionID {
		w = append(w, "debug.expose_session_id is on: the built-in upstream shows each client its session ID; never use this in production")
	}
	if w1 := adminEverywhere(cfg); w1 != "" {
		w = append(w, w1)
	}
	for i, l := range cfg.Listeners {
		if len(l.Certificates) == 0 {
			w = append(w, fmt.Sprintf("listeners[%d] has no certificate: it serves a self-signed certificate for localhost", i))
		}
		if w1 := balancerTrustedForEarlyData(i, l); w1 != "" {
			w = append(w, w1)
		}
	}
	return w
}

// balancerTrustedForEarlyData warns of an early_data_trusted entry inside
// a proxy_protocol.trusted range (one narrower than every address): with
// PROXY protocol the address judged is the client address in the PROXY
// header, so a balancer's own address there counts only on the balancer's
// LOCAL connections (health checks), and an intermediary that sends the
// PROXY header itself is never the one judged.
func balancerTrustedForEarlyData(i int, l config.Listener) string {
	if !l.ProxyProtocol.Enabled {
		return ""
	}
	for _, e := range l.EarlyDataTrusted {
		ep, ok := ipprefix.Parse(e)
		if !ok {
			continue
		}
		for _, b := range l.ProxyProtocol.Trusted {
			bp, ok := ipprefix.Parse(b)
			if ok && bp.Bits() > 0 && ep.Bits() >= bp.Bits() && bp.Contains(ep.Addr()) {
				return fmt.Sprintf("listeners[%d].early_data_trusted lists %s, inside proxy_protocol.trusted %s: with PROXY protocol the address judged is the client address in the PROXY header, not the balancer's; list the egress ranges of the intermediary (the CDN) that sends Early-Data",
					i, e, b)
			}
		}
	}
	return ""
}

// checkAddresses binds and releases every address serve would listen on
// (the listeners, their UDP ports for HTTP/3, and the admin API), and
// returns the first that cannot be bound.
func checkAddresses(cfg *config.Config) error {
	type addr struct{ key, address string }
	var addrs []addr
	// The admin API first, as serve binds it: where it overlaps a
	// listener, both name the listener.
	if cfg.Admin.Address != "off" {
		addrs = append(addrs, addr{"admin.address", cfg.Admin.Address})
	}
	for i, l := range cfg.Listeners {
		addrs = append(addrs, addr{fmt.Sprintf("listeners[%d].address", i), l.Address})
	}
	// Each stays bound until all are: serve holds them all at once, so
	// two that overlap (0.0.0.0:443 and 127.0.0.1:443, the admin API on a
	// listener's address) fail here as they would there.
	var held []io.Closer
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a.address)
		if err != nil {
			return fmt.Errorf("%s: cannot listen on %s: %v", a.key, a.address, err)
		}
		held = append(held, ln)
	}
	// An HTTP/3 listener takes the UDP port of its address too.
	for i, l := range cfg.Listeners {
		if !l.HTTP3 {
			continue
		}
		pc, err := net.ListenPacket("udp", l.Address)
		if err != nil {
			return fmt.Errorf("listeners[%d].http3: cannot listen on UDP %s: %v", i, l.Address, err)
		}
		held = append(held, pc)
	}
	return nil
}

// amqpHeartbeatOff reports whether rawURL is an AMQP farm URL that sets
// heartbeat=0. amqp091-go then takes the broker's interval, not none: it
// turns heartbeats off only if the broker's is 0 too.
func amqpHeartbeatOff(rawURL string) bool {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") || !u.Query().Has("heartbeat") {
		return false
	}
	n, err := strconv.ParseUint(u.Query().Get("heartbeat"), 10, 16)
	return err == nil && n == 0
}

// replicasUnwaited returns a warning if the farm URL is a Redis Sentinel
// or Cluster one without wait_replicas (or with 0) while cache.single_use
// or a listener's early_data relies on the store's exactly-once
// operations: Redis replicates asynchronously, and a failover can undo a
// take or a strike the master acknowledged. It returns "" otherwise.
func replicasUnwaited(cfg *config.Config) string {
	u, err := url.Parse(cfg.Farm.URL)
	if err != nil {
		return ""
	}
	switch u.Scheme {
	case "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster":
	default:
		return ""
	}
	if n, err := strconv.Atoi(u.Query().Get("wait_replicas")); err == nil && n > 0 {
		return ""
	}
	var uses []string
	if cfg.Cache.SingleUse {
		uses = append(uses, "cache.single_use")
	}
	for _, l := range cfg.Listeners {
		if l.EarlyData {
			uses = append(uses, "early_data")
			break
		}
	}
	if len(uses) == 0 {
		return ""
	}
	return fmt.Sprintf("%s on a replicated Redis (%s) without wait_replicas: Redis replicates asynchronously, so a failover can bring back a session already resumed or a 0-RTT identity already used; set wait_replicas=1 (and wait_timeout) in farm.url",
		strings.Join(uses, " and "), u.Scheme)
}

// adminEverywhere returns a warning when the admin API listens on every
// interface (admin.address with no host, 0.0.0.0 or ::), public ones
// included: its reads (/metrics, /healthz, /sessions) need no token, and
// it speaks plain HTTP, so the bearer token crosses the network in the
// clear. A specific address (loopback, a management network's) is taken as
// chosen.
func adminEverywhere(cfg *config.Config) string {
	if cfg.Admin.Address == "off" {
		return ""
	}
	host, _, err := net.SplitHostPort(cfg.Admin.Address)
	if err != nil {
		return ""
	}
	if host != "" {
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.IsUnspecified() {
			return ""
		}
	}
	return fmt.Sprintf("admin.address %s listens on every interface: its reads (/metrics, /healthz, /sessions) need no token and it speaks plain HTTP, so the admin token would cross the network in the clear; give it a loopback or management address",
		cfg.Admin.Address)
}
