package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/tlsfarm/tlsfarm/config"
	"github.com/tlsfarm/tlsfarm/farm"
)

// degradedAfter is how long the daemon gives the farm transport at start
// before it says, once, that it serves degraded.
const degradedAfter = 2 * time.Second

// keysWait bounds how long the daemon waits at start for the farm's ticket
// keys before it accepts connections (see farm.Rotator.WaitReady). The wait
// ends at once when the farm's store answers, or refuses the connection,
// or a stop signal arrives (the daemon then stops without serving).
const keysWait = 3 * time.Second

// A stoppedError ends a start that a stop signal cancelled while it waited
// for the farm: the daemon then stops cleanly, without serving.
type stoppedError struct {
	waitingFor string // what the start was waiting for, for the log
}

func (e *stoppedError) Error() string {
	return "start stopped by a signal while waiting for " + e.waitingFor
}

// stopSignal is the cause of the start context's end when a stop signal
// ends it (see serve).
type stopSignal struct{ sig os.Signal }

func (s stopSignal) Error() string { return s.sig.String() + " signal received" }

// stoppedBySignal reports whether ctx ended because a stop signal arrived.
func stoppedBySignal(ctx context.Context) bool {
	var s stopSignal
	return errors.As(context.Cause(ctx), &s)
}

// joinFarm opens the farm transport, joins the farm and starts ticket key
// rotation: farm-wide through the store where the transport has one,
// locally otherwise. In strict mode it waits, within ctx, until the
// transport is up.
func (d *daemon) joinFarm(ctx, bg context.Context, cfg *config.Config) error {
	bus, store, closer, err := openTransport(cfg.Farm.URL, cfg.Farm.Name)
	if err != nil {
		return fmt.Errorf("farm.url: %v", err)
	}
	d.transport = closer
	mode, _ := farm.ParseMode(cfg.Farm.Mode)
	d.node, err = farm.Join(bg, farm.Config{
		Farm:           cfg.Farm.Name,
		NodeName:       cfg.Node,
		Secrets:        cfg.Farm.Secrets,
		Cache:          d.cache,
		Bus:            bus,
		Store:          store,
		Mode:           mode,
		WriteThrough:   cfg.Farm.WriteThrough,
		LookupTimeout:  cfg.Farm.LookupDeadline,
		FlushWindow:    cfg.Farm.FlushWindow,
		CarrySessions:  cfg.Farm.CarrySessions,
		MaxDeliveryLag: cfg.Farm.MaxDeliveryLag,
		Logger:         d.log,

		RevocationFile:         cfg.Farm.RevocationFile,
		FallbackTicketLifetime: fallbackLifetime(cfg.Farm.FallbackTicketLifetime),
	})
	if err != nil {
		return fmt.Errorf("farm: %v", err)
	}
	if store != nil {
		d.rotator, err = d.node.RotateTicketKeys(bg, farm.RotationConfig{
			Ring: d.ring, Interval: cfg.Tickets.RotationInterval, Keep: cfg.Tickets.Keep,
		})
		if err != nil {
			return fmt.Errorf("tickets: %v", err)
		}
		// Ready means ready: no connection is accepted before the node
		// holds the farm's ticket keys, unless the farm is unreachable.
		d.log.Info("waiting for the farm's ticket keys", "up_to", keysWait.String(),
			"farm", cfg.Farm.Name, "farm_transport", transportName(cfg.Farm.URL))
		rctx, cancel := context.WithTimeout(ctx, keysWait)
		err = d.rotator.WaitReady(rctx)
		cancel()
		if err != nil && stoppedBySignal(ctx) {
			// Not the farm's failure: the operator's stop.
			return &stoppedError{waitingFor: "the farm's ticket keys"}
		}
		if err != nil {
			d.log.Warn("farm ticket keys unavailable: serving with this node's own keys, which join the farm's set (decrypt only) when it is reachable",
				"err", err, "farm_transport", transportName(cfg.Farm.URL))
		}
	} else {
		go d.ring.Run(bg) // configWarnings says what this means for stateless tickets
	}
	if cfg.Farm.Strict {
		return waitConnected(ctx, d.node, cfg.Farm.ConnectTimeout)
	}
	go d.watchStart(bg)
	return nil
}

// waitConnected waits until the node is subscribed to the farm's bus.
func waitConnected(ctx context.Context, n *farm.Node, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !n.Connected() {
		select {
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				return fmt.Errorf("farm.url: the farm transport is unreachable after %v, and farm.strict refuses to start without it", timeout)
			}
			if stoppedBySignal(ctx) {
				return &stoppedError{waitingFor: "the farm transport"}
			}
			return fmt.Errorf("start cancelled while waiting for the farm transport")
		case <-tick.C:
		}
	}
	return nil
}

// watchStart says once, if the transport is not up soon after start, that
// the node serves degraded. The farm package logs when it connects.
func (d *daemon) watchStart(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(degradedAfter):
	}
	// A node that connected and lost the transport since has had that
	// logged by the farm package: this line is only for one that never
	// reached it.
	if !d.node.Connected() && !everConnected(d.node) {
		d.log.Warn("farm transport unreachable: serving from the local cache; the node joins the farm when the transport comes back",
			"farm", d.started.Farm.Name, "farm_transport", transportName(d.started.Farm.URL))
	}
}

// everConnected reports whether n's bus subscription ever came up.
func everConnected(n *farm.Node) bool {
	for _, s := range n.Metrics() {
		if s.Name == "tlsfarm_farm_connects_total" {
			return s.Value > 0
		}
	}
	return false
}

// fallbackLifetime maps the setting (0: off) to farm.Config's (negative:
// off, 0: default).
func fallbackLifetime(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
