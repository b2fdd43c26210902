package main

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tlsfarm/tlsfarm/config"
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
	if cfg.Tickets.RotationInterval < time.Minute {
		w = append(w, fmt.Sprintf("tickets.rotation_interval %s is under 1m: fine for a trial or a test, too short for production (tickets live only keep+1 intervals)",
			cfg.Tickets.RotationInterval))
	}
	if cfg.Debug.ExposeSessionID {
		w = append(w, "debug.expose_session_id is on: the built-in upstream shows each client its session ID; never use this in production")
	}
	for i, l := range cfg.Listeners {
		if len(l.Certificates) == 0 {
			w = append(w, fmt.Sprintf("listeners[%d] has no certificate: it serves a self-signed certificate for localhost", i))
		}
	}
	return w
}

// checkAddresses binds and releases every address serve would listen on
// (the listeners and the admin API), and returns the first that cannot be
// bound.
func checkAddresses(cfg *config.Config) error {
	type addr struct{ key, address string }
	var addrs []addr
	for i, l := range cfg.Listeners {
		addrs = append(addrs, addr{fmt.Sprintf("listeners[%d].address", i), l.Address})
	}
	if cfg.Admin.Address != "off" {
		addrs = append(addrs, addr{"admin.address", cfg.Admin.Address})
	}
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a.address)
		if err != nil {
			return fmt.Errorf("%s: cannot listen on %s: %v", a.key, a.address, err)
		}
		ln.Close()
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
