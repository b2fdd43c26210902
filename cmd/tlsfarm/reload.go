package main

import (
	"fmt"
	"strings"

	"github.com/tlsfarm/tlsfarm/config"
)

// reload loads the configuration again and applies what can change while
// running. An invalid configuration is rejected whole and the running one
// stays; restart-only settings that changed are named and keep their
// values until a restart.
func (d *daemon) reload(load func() (*config.Config, error)) {
	nc, err := load()
	if err != nil {
		d.reloadFailures.Add(1)
		d.log.Error("reload rejected; the running configuration is unchanged", "err", err.Error())
		return
	}
	// The proxy runs the listeners it started with, each matched to its
	// entry in the new configuration (pairListeners): one added to the
	// file waits for a restart (RestartOnly names it), one removed keeps
	// the settings it last had; the others take their new settings.
	pair, added := pairListeners(d.started.Listeners, nc.Listeners)
	ls := make([]config.Listener, len(pair))
	cmp := *nc // nc as RestartOnly compares it with the start
	cmp.Listeners = make([]config.Listener, len(pair), len(pair)+len(added))
	var removed []string
	for i, j := range pair {
		if j < 0 {
			ls[i], cmp.Listeners[i] = d.listeners[i], d.started.Listeners[i]
			removed = append(removed, d.started.Listeners[i].Address)
			continue
		}
		ls[i], cmp.Listeners[i] = nc.Listeners[j], nc.Listeners[j]
	}
	for _, j := range added {
		cmp.Listeners = append(cmp.Listeners, nc.Listeners[j])
	}
	pcfg := *nc
	pcfg.Listeners = ls
	// The farm (its name and secrets, from which the QUIC keys derive)
	// is the one joined at start: a file that no longer names a farm, and
	// so holds no secret, needs a restart for that, not a rejected reload.
	pcfg.Farm = d.started.Farm
	pc, err := d.proxyConfig(&pcfg)
	if err == nil {
		err = d.proxy.Reload(pc)
	}
	if err != nil {
		d.reloadFailures.Add(1)
		d.log.Error("reload rejected; the running configuration is unchanged", "err", err.Error())
		return
	}
	if lvl, err := config.ParseLevel(nc.Log.Level); err == nil {
		d.level.Set(lvl)
	}
	if nc.Debug.ExposeSessionID && !d.cfg.Load().Debug.ExposeSessionID {
		// As at start (configWarnings): clients now see their session IDs.
		d.log.Warn("debug.expose_session_id is on: the built-in upstream shows each client its session ID; never use this in production")
	}
	d.listeners = ls
	d.cfg.Store(nc)
	d.reloads.Add(1)
	restart := config.RestartOnly(d.started, &cmp)
	if len(removed) > 0 {
		restart = append(restart, fmt.Sprintf("listeners (%d entries, now %d: %s kept until the restart)",
			len(d.started.Listeners), len(nc.Listeners), strings.Join(removed, ", ")))
	}
	if len(restart) > 0 {
		d.log.Warn("reload applied, except settings that need a restart: they keep their running values until tlsfarm restarts",
			"restart_needed", strings.Join(restart, ", "))
		return
	}
	d.log.Info("reload applied")
}

// pairListeners matches the running listeners (as configured at start) to
// the entries of a new configuration: by address first, then, among those
// left on both sides, in order, so that a listener whose address changed
// keeps its socket and takes its entry's other settings (the address waits
// for a restart). pair[i] is the index in next of running listener i's
// entry, or -1 if it has none (removed from the file); added are the
// entries of next no running listener has, in order.
func pairListeners(running, next []config.Listener) (pair, added []int) {
	pair = make([]int, len(running))
	taken := make([]bool, len(next))
	for i, r := range running {
		pair[i] = -1
		for j, n := range next {
			if !taken[j] && n.Address == r.Address {
				pair[i], taken[j] = j, true
				break
			}
		}
	}
	j := 0
	for i := range pair {
		if pair[i] >= 0 {
			continue
		}
		for j < len(next) && taken[j] {
			j++
		}
		if j == len(next) {
			break
		}
		pair[i], taken[j] = j, true
	}
	for j := range next {
		if !taken[j] {
			added = append(added, j)
		}
	}
	return pair, added
}
