package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tlsfarm/tlsfarm/admin"
	"github.com/tlsfarm/tlsfarm/config"
	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/proxy"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// A daemon is one running tlsfarm serve: the parts, wired.
type daemon struct {
	started *config.Config // the restart-only settings in force
	cfg     atomic.Pointer[config.Config]
	log     *slog.Logger
	level   *slog.LevelVar

	// listeners holds the settings the proxy's listeners run with, one
	// to one (set by start and reload, on the signal loop only).
	listeners []config.Listener

	cache     *session.Cache
	ring      *ticket.Ring
	node      *farm.Node
	transport io.Closer
	rotator   *farm.Rotator
	cancel    context.CancelFunc // stops local key rotation and farm watching

	proxy      *proxy.Server
	http3      bool             // a listener serves HTTP/3
	selfSigned *tls.Certificate // served by listeners with no certificate
	admin      *http.Server

	reloads, reloadFailures atomic.Uint64
}

// start builds and starts every part of the daemon. ctx bounds only the
// start itself (its waits for the farm); if a stop signal ends it during
// one, start returns a *stoppedError, having closed what it started.
func start(ctx context.Context, cfg *config.Config, log *slog.Logger, level *slog.LevelVar) (_ *daemon, err error) {
	d := &daemon{started: cfg, listeners: cfg.Listeners, log: log, level: level}
	d.cfg.Store(cfg)
	bg, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	defer func() {
		if err != nil {
			var stopped *stoppedError
			if errors.As(err, &stopped) && d.transport != nil {
				// Stopped before serving: no session was issued, so
				// the farm misses nothing but what the node keeps for
				// the next start anyway (the revocation and lifecycle
				// files). Closing the transport first ends the store's
				// commands in flight at once; on a hung store they would
				// hold the rotator's and the node's Close to their
				// deadlines (2 s, then up to 1 s), go-redis keeping a
				// deadline when its context is cancelled.
				d.transport.Close()
				d.transport = nil
			}
			d.close()
		}
	}()

	mode, _ := session.ParseMode(cfg.Cache.Mode)
	d.cache, err = session.New(&session.Config{
		Capacity:                cfg.Cache.Size,
		Buckets:                 cfg.Cache.Buckets,
		Lifetime:                cfg.Cache.Lifetime,
		MaxChainLifetime:        cfg.Cache.MaxChainLifetime,
		Mode:                    mode,
		AllowServerNameMismatch: !cfg.Cache.SNIBinding,
		SingleUse:               cfg.Cache.SingleUse,
		Logger:                  log,
	})
	if err != nil {
		return nil, err
	}
	d.ring, err = ticket.NewRing(ticket.RingConfig{Keep: cfg.Tickets.Keep, Interval: cfg.Tickets.RotationInterval, Logger: log})
	if err != nil {
		return nil, err
	}
	if cfg.Farm.URL != "" {
		if err := d.joinFarm(ctx, bg, cfg); err != nil {
			return nil, err
		}
	} else {
		go d.ring.Run(bg)
	}

	pc, err := d.proxyConfig(cfg)
	if err != nil {
		return nil, err
	}
	d.http3 = anyHTTP3(cfg)
	d.warnEarlyData(cfg)
	if d.proxy, err = proxy.New(pc); err != nil {
		return nil, err
	}
	// Every address is bound before anything is served: an admin
	// address that does not bind stops the start before the proxy's
	// listeners take a connection, not after (a node that served briefly
	// and exited).
	adminSrv, adminLn, err := d.bindAdmin(cfg)
	if err != nil {
		return nil, err
	}
	if err := d.proxy.Start(); err != nil {
		if adminLn != nil {
			adminLn.Close()
		}
		return nil, err
	}
	adminAddr := "off"
	if adminLn != nil {
		d.admin = adminSrv
		go d.admin.Serve(adminLn)
		adminAddr = adminLn.Addr().String()
	}
	if d.selfSigned != nil {
		log.Warn("no certificate configured: serving a self-signed certificate for localhost",
			"sha256", proxy.Fingerprint(d.selfSigned), "not_after", d.selfSigned.Leaf.NotAfter.Format("2006-01-02"))
	}
	for _, w := range configWarnings(cfg) {
		if !strings.Contains(w, "self-signed") { // logged above, with its fingerprint
			log.Warn(w)
		}
	}
	farmName := "none"
	if cfg.Farm.URL != "" {
		farmName = cfg.Farm.Name
	}
	log.Info("tlsfarm ready", "node", cfg.Node, "listeners", d.proxy.Addrs(), "admin", adminAddr,
		"cache_mode", cfg.Cache.Mode, "farm", farmName, "farm_transport", transportName(cfg.Farm.URL),
		"websocket_h2", proxy.HTTP2WebSockets())
	return d, nil
}

// bindAdmin builds the admin API's server and binds its listener, without
// serving it: start serves it once the proxy's listeners are up. With the
// admin API off it returns a nil server and listener.
func (d *daemon) bindAdmin(cfg *config.Config) (*http.Server, net.Listener, error) {
	if cfg.Admin.Address == "off" {
		return nil, nil, nil
	}
	ac := admin.Config{
		NodeName: cfg.Node,
		Cache:    d.cache,
		Ring:     d.ring,
		Ready:    d.ready,
		Strict:   cfg.Farm.Strict,
		Token:    func() string { return d.cfg.Load().Admin.BearerToken },
		Proxy:    d.proxyStats,
		Logger:   d.log,
	}
	if d.node != nil {
		ac.Node = d.node
	}
	if d.rotator != nil {
		ac.Rotation = d.rotator.Metrics
	}
	h, err := admin.New(ac)
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", cfg.Admin.Address)
	if err != nil {
		return nil, nil, fmt.Errorf("admin.address: %w", err)
	}
	// Bound every wait on a client, as on the listeners: a request (its
	// body too) must arrive within 10 s, its answer must be taken within
	// 10 s of it (a revocation waits at most 1 s of them; a scraper that
	// stops reading /metrics would otherwise hold its goroutine for ever),
	// and a keep-alive connection may wait for its next one for
	// limits.idle_timeout.
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       cfg.Limits.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelDebug),
	}
	return srv, ln, nil
}

// proxyStats converts the terminator's counters for the admin API.
func (d *daemon) proxyStats() admin.ProxyStats {
	s := d.proxy.Stats()
	out := admin.ProxyStats{
		HandshakeFailures: map[string]uint64{
			"timeout": s.HandshakeTimeouts, "tls": s.HandshakeErrors, "proxy_header": s.ProxyHeaderFailures,
			"proxy_untrusted": s.ProxyUntrusted,
		},
		Accepted:         s.Accepted,
		Open:             s.Open,
		UpstreamRequests: s.UpstreamHTTPRequests,
		UpstreamErrors:   s.UpstreamErrors,
		Reloads:          d.reloads.Load(),
		ReloadFailures:   d.reloadFailures.Load(),
		QUIC:             d.quicStats(),
		Samples:          d.proxy.Metrics(),
	}
	for _, h := range s.Handshakes {
		out.Handshakes = append(out.Handshakes, admin.Handshakes{Version: tls.VersionName(h.Version), Resumed: h.Resumed, Count: h.Count})
	}
	return out
}

// stop drains the listeners (up to the drain timeout, or until cut is
// closed), then stops the rest, flushing the farm's queues. It reports
// whether cut ended the drain with connections still open.
func (d *daemon) stop(cut <-chan struct{}) (wasCut bool) {
	drain := d.cfg.Load().Limits.DrainTimeout
	d.log.Info("draining connections", "drain_timeout", drain.String())
	ctx, cancel := context.WithTimeoutCause(context.Background(), drain, errDrainTimeout)
	go func() {
		select {
		case <-cut:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := d.proxy.Shutdown(ctx)
	cause := context.Cause(ctx)
	cancel()
	switch {
	case err == nil:
	case errors.Is(cause, errDrainTimeout):
		d.log.Warn("drain timeout reached; closed the connections still open")
	case errors.Is(cause, context.Canceled):
		d.log.Warn("drain cut short by a second stop signal; closed the connections still open")
		wasCut = true
	}
	if d.node != nil {
		d.log.Info("flushing the farm's queues")
	}
	d.close()
	d.log.Info("stopped")
	return wasCut
}

// revocationFlush bounds, from the start of the close, how long the stop
// keeps retrying revocations not yet applied farm-wide. With the farm's
// other last writes (a tally, a mark: an operation timeout each at worst)
// it keeps the close within flushBound.
const revocationFlush = 7 * time.Second

// errDrainTimeout ends a drain that reached limits.drain_timeout.
var errDrainTimeout = errors.New("drain timeout reached")

// close stops everything but the proxy, in reverse order of start.
func (d *daemon) close() {
	if d.admin != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		d.admin.Shutdown(ctx)
		cancel()
	}
	if d.rotator != nil {
		d.rotator.Close()
	}
	d.cancel()
	if d.node != nil {
		// Revocations made while the store was down are retried until
		// revocationFlush after the close began, not for one operation
		// timeout: a store back within seconds of the stop still gets
		// them (within flushBound, after a second stop signal).
		ctx, cancel := context.WithTimeout(context.Background(), revocationFlush)
		d.node.Shutdown(ctx)
		cancel()
	}
	if d.transport != nil {
		d.transport.Close()
	}
	if d.cache != nil {
		d.cache.Close()
	}
}

// ready is the admin API's Config.Ready: the proxy's, with its graceful
// shutdown told apart (admin.ErrDraining), so that /healthz keeps
// answering 200 while the open connections finish.
func (d *daemon) ready() error {
	err := d.proxy.Ready()
	if errors.Is(err, proxy.ErrShuttingDown) {
		return fmt.Errorf("%w (%v)", admin.ErrDraining, err)
	}
	return err
}
