// Package caddytlsfarm is a Caddy module, tls.stek.tlsfarm, that makes a
// Caddy server a member of a tlsfarm farm's session ticket key rotation, so
// that every Caddy of a fleet resumes the TLS sessions of the others.
//
// The module joins the farm as "tlsfarm keys" does (the same transport URL,
// farm name, secret, rotation interval and number of kept keys as the
// farm's other members; it may hold the rotation lease) and feeds Caddy's
// session ticket service each new key set: the current key first (Caddy's
// crypto/tls encrypts with it), then the pre-staged next key, then the
// previous keys. The keys Caddy gets are derived from the farm's for Caddy
// alone (see keyexport.CaddyKey): Caddy's tickets resume on other Caddy
// servers of the farm, not on tlsfarm serve nodes or nginx.
//
// Caddy's JSON config (the Caddyfile has no syntax for a ticket key source):
//
//	"apps": {"tls": {"session_tickets": {"key_source": {
//	    "provider": "tlsfarm",
//	    "url": "redis://10.0.0.5:6379/0",
//	    "farm": "web",
//	    "secret_file": "/etc/tlsfarm/farm.secret",
//	    "rotation_interval": "12h",
//	    "keep": 2
//	}}}}
//
// Build Caddy with it: xcaddy build --with github.com/tlsfarm/tlsfarm/contrib/caddy
package caddytlsfarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/keyexport"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

func init() {
	caddy.RegisterModule(new(Provider))
}

// Defaults of the Provider's fields; they are tlsfarm serve's.
const (
	DefaultFarm     = "tlsfarm"
	DefaultKeep     = ticket.DefaultKeep
	DefaultInterval = ticket.DefaultInterval

	// DefaultJoinTimeout is how long Initialize waits for the farm's key set
	// before Caddy starts with keys of its own (until the farm's arrive).
	DefaultJoinTimeout = 10 * time.Second
)

// Provider is the tls.stek.tlsfarm module: Caddy's session ticket keys come
// from a tlsfarm farm.
type Provider struct {
	// URL is the farm transport, with a store: redis://, rediss:// or
	// nats://. Required.
	URL string `json:"url,omitempty"`

	// Farm is the farm's name (default "tlsfarm").
	Farm string `json:"farm,omitempty"`

	// SecretFile is the farm secret's file, made by "tlsfarm keygen".
	// Required.
	SecretFile string `json:"secret_file,omitempty"`

	// Node names this member in the farm's logs (default the host name).
	Node string `json:"node,omitempty"`

	// RotationInterval and Keep must be the farm's settings (tlsfarm's
	// -ticket-rotation and -ticket-keep; defaults 12h and 2). Caddy's own
	// session_tickets rotation_interval and max_keys do not apply.
	RotationInterval caddy.Duration `json:"rotation_interval,omitempty"`
	Keep             int            `json:"keep,omitempty"`

	// JoinTimeout bounds how long Caddy waits at start for the farm's key
	// set (default 10s). After it, Caddy serves with keys of its own, which
	// join the farm's set (decrypt only) when it arrives, so that tickets
	// issued meanwhile keep resuming.
	JoinTimeout caddy.Duration `json:"join_timeout,omitempty"`

	log       *slog.Logger
	cache     *session.Cache
	ring      *ticket.Ring
	node      *farm.Node
	rotator   *farm.Rotator
	transport io.Closer
	epoch     atomic.Uint64 // of the keys last handed to Caddy
}

// CaddyModule returns the module's information.
func (*Provider) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.stek.tlsfarm",
		New: func() caddy.Module { return new(Provider) },
	}
}

// Provision sets the defaults and takes Caddy's logger.
func (p *Provider) Provision(ctx caddy.Context) error {
	p.log = ctx.Slogger()
	if p.Farm == "" {
		p.Farm = DefaultFarm
	}
	if p.Node == "" {
		h, _ := os.Hostname()
		p.Node = "caddy@" + h
	}
	if p.RotationInterval == 0 {
		p.RotationInterval = caddy.Duration(DefaultInterval)
	}
	if p.Keep == 0 {
		p.Keep = DefaultKeep
	}
	if p.JoinTimeout == 0 {
		p.JoinTimeout = caddy.Duration(DefaultJoinTimeout)
	}
	return nil
}

// Validate checks the configuration.
func (p *Provider) Validate() error {
	switch {
	case p.URL == "":
		return errors.New("tlsfarm: url is required")
	case p.SecretFile == "":
		return errors.New("tlsfarm: secret_file is required (make one with: tlsfarm keygen -out FILE)")
	case time.Duration(p.RotationInterval) < time.Second:
		return errors.New("tlsfarm: rotation_interval must be at least 1s")
	case p.Keep < 1 || p.Keep > 16:
		return fmt.Errorf("tlsfarm: keep must be 1 to 16, not %d", p.Keep)
	}
	return nil
}

// Initialize joins the farm's key rotation and returns the first keys:
// the farm's, once they arrive within JoinTimeout; otherwise keys of this
// server's own until they do.
func (p *Provider) Initialize(*caddytls.SessionTicketService) ([][32]byte, error) {
	if err := p.join(); err != nil {
		p.close()
		return nil, err
	}
	// As tlsfarm serve joins: a rotator that gives up waiting knows that
	// this server then encrypts with keys of its own, and merges them into
	// the farm's set when it arrives, so that those tickets keep resuming.
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(p.JoinTimeout))
	err := p.rotator.WaitReady(ctx)
	cancel()
	if onInitialize != nil {
		onInitialize(p)
	}
	if err != nil {
		p.log.Warn("tlsfarm: no farm key set yet; using this server's own ticket keys, which join the farm's set (decrypt only) when it arrives",
			"farm", p.Farm, "join_timeout", time.Duration(p.JoinTimeout).String(), "err", err)
	}
	return p.keys(), nil
}

// Next sends each new farm key set, derived for Caddy, until done is closed;
// then it leaves the farm.
func (p *Provider) Next(done <-chan struct{}) <-chan [][32]byte {
	ch := make(chan [][32]byte)
	go func() {
		defer p.close()
		tick := time.NewTicker(keyexport.DefaultPoll)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			if p.ring.Status().Epoch == p.epoch.Load() {
				continue
			}
			keys := p.keys()
			select {
			case ch <- keys:
				p.log.Info("tlsfarm: session ticket keys updated", "farm", p.Farm, "epoch", p.epoch.Load())
			case <-done:
				return
			}
		}
	}()
	return ch
}

// keys returns the ring's keys derived for Caddy, in crypto/tls's order, and
// notes their epoch. The previous keys come in their order of use (see
// ticket.Ring.StateByUse): keys merged in from another key set, which only
// ever decrypted here, after the farm's own, so that crypto/tls tries the
// keys most tickets are under first.
func (p *Provider) keys() [][32]byte {
	st, _ := p.ring.StateByUse()
	defer func() {
		st.Current, st.Next = ticket.Key{}, ticket.Key{}
		clear(st.Previous)
	}()
	p.epoch.Store(st.Epoch)
	var out [][32]byte
	for _, k := range st.Keys() {
		out = append(out, keyexport.CaddyKey(k))
	}
	return out
}

func (p *Provider) join() error {
	secrets, err := farm.LoadSecrets(p.SecretFile)
	if err != nil {
		return fmt.Errorf("tlsfarm: secret_file: %v", err)
	}
	bus, store, closer, err := openTransport(p.URL, p.Farm)
	if err != nil {
		return fmt.Errorf("tlsfarm: url: %v", err)
	}
	p.transport = closer
	// Caddy keeps its own sessions; the farm needs a cache to join, and a
	// small one holds the few sessions peers announce meanwhile.
	if p.cache, err = session.New(&session.Config{Capacity: 64, Logger: p.log}); err != nil {
		return err
	}
	interval := time.Duration(p.RotationInterval)
	if p.ring, err = ticket.NewRing(ticket.RingConfig{Keep: p.Keep, Interval: interval, Logger: p.log}); err != nil {
		return err
	}
	p.node, err = farm.Join(context.Background(), farm.Config{
		Farm: p.Farm, NodeName: p.Node, Secrets: secrets, Cache: p.cache, Bus: bus, Coord: store, Logger: p.log,
	})
	if err != nil {
		return fmt.Errorf("tlsfarm: %v", err)
	}
	p.rotator, err = p.node.RotateTicketKeys(context.Background(), farm.RotationConfig{Ring: p.ring, Interval: interval, Keep: p.Keep})
	return err
}

// close leaves the farm, releasing the rotation lease if held.
func (p *Provider) close() {
	if p.rotator != nil {
		p.rotator.Close()
	}
	if p.node != nil {
		p.node.Close()
	}
	if p.transport != nil {
		p.transport.Close()
	}
	if p.cache != nil {
		p.cache.Close()
	}
}

// openTransport opens the farm transport of rawURL; it must have a store.
func openTransport(rawURL, farmName string) (transport.Bus, transport.Store, io.Closer, error) {
	scheme, _, _ := strings.Cut(rawURL, "://")
	switch {
	case strings.HasPrefix(scheme, "redis"):
		t, err := redisbus.Open(rawURL, farmName)
		if err != nil {
			return nil, nil, nil, err
		}
		return t, t, t, nil
	case scheme == "nats" || scheme == "tls":
		t, err := natsbus.Open(rawURL, farmName, nil)
		if err != nil {
			return nil, nil, nil, err
		}
		return t, t, t, nil
	}
	return nil, nil, nil, errors.New("key rotation needs a transport with a store: redis://, rediss:// or nats://")
}

// onInitialize, if set (by tests), sees each Provider that Initialize
// starts.
var onInitialize func(*Provider)

// Interface guards.
var (
	_ caddytls.STEKProvider = (*Provider)(nil)
	_ caddy.Provisioner     = (*Provider)(nil)
	_ caddy.Validator       = (*Provider)(nil)
)
