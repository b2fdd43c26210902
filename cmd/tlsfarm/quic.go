package main

import (
	"fmt"

	"github.com/tlsfarm/tlsfarm/admin"
	"github.com/tlsfarm/tlsfarm/config"
	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/proxy"
)

// quicConfig fills in the HTTP/3 settings of pc: with a farm, the QUIC keys
// derived from the farm secret and the farm's strike register for 0-RTT;
// alone, keys of the process's own and a strike register in memory.
//
// A farm node never falls back to the register in memory: that one is the
// node's own, so a ticket's early data could be accepted once on every
// node. The farm's register is set first, whatever else fails, and keys
// that cannot be derived are an error (the daemon refuses to start, or the
// reload is rejected), not a quiet fallback to keys of the node's own.
func (d *daemon) quicConfig(cfg *config.Config, pc *proxy.Config) error {
	if d.node == nil {
		return nil
	}
	pc.AntiReplay = d.node.Strike
	keys, err := farm.DeriveQUICKeys(cfg.Farm.Name, cfg.Farm.Secrets)
	if err != nil {
		return fmt.Errorf("farm.secret_file: deriving the farm's QUIC keys: %v", err)
	}
	pc.QUICTokenKey, pc.QUICStatelessResetKey = &keys.TokenKey, &keys.StatelessResetKey
	return nil
}

// warnEarlyData says, once at start, when early data can never be
// accepted: the farm transport has no store (no key rotation either, so
// rotator is nil) to hold the strike register.
func (d *daemon) warnEarlyData(cfg *config.Config) {
	if d.node == nil || d.rotator != nil {
		return
	}
	for _, l := range cfg.Listeners {
		if l.EarlyData {
			d.log.Warn("early_data is on but the farm transport has no store for the anti-replay register: every 0-RTT attempt will be refused (and counted as store_unavailable)",
				"farm_transport", transportName(cfg.Farm.URL))
			return
		}
	}
}

// quicStats converts the HTTP/3 counters for the admin API (nil when no
// listener serves HTTP/3).
func (d *daemon) quicStats() *admin.QUICStats {
	if !d.http3 {
		return nil
	}
	s := d.proxy.QUICStats()
	return &admin.QUICStats{
		FullHandshakes: s.FullHandshakes, ResumedHandshakes: s.ResumedHandshakes,
		EarlyDataOffered: s.EarlyDataOffered, EarlyDataAccepted: s.EarlyDataAccepted,
		EarlyDataRejected: s.EarlyDataRejected, EarlyRequests: s.EarlyRequests, TooEarly: s.TooEarly,
		Open: s.Open,
	}
}

// anyHTTP3 reports whether a listener of cfg serves HTTP/3.
func anyHTTP3(cfg *config.Config) bool {
	for _, l := range cfg.Listeners {
		if l.HTTP3 {
			return true
		}
	}
	return false
}
