package main

import (
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
	// The proxy runs the listeners it started with: one added to the
	// file waits for a restart (RestartOnly names it), one removed keeps
	// the settings it last had; the others take their new settings.
	ls := append([]config.Listener(nil), nc.Listeners[:min(len(nc.Listeners), len(d.listeners))]...)
	ls = append(ls, d.listeners[len(ls):]...)
	pcfg := *nc
	pcfg.Listeners = ls
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
	if restart := config.RestartOnly(d.started, nc); len(restart) > 0 {
		d.log.Warn("reload applied, except settings that need a restart: they keep their running values until tlsfarm restarts",
			"restart_needed", strings.Join(restart, ", "))
		return
	}
	d.log.Info("reload applied")
}
