// Package admin is tlsfarm's admin HTTP API, served on a listener of its own
// (loopback by default):
//
//	GET    /metrics          Prometheus metrics: handshakes, cache, farm, ticket keys, upstreams
//	GET    /healthz          liveness, with detail (JSON): listeners, farm connection, keys
//	GET    /readyz           readiness for a load balancer: 200 or 503
//	GET    /sessions         the session cache's counters (JSON)
//	DELETE /sessions/{id}    revoke a session (and its resumption chain), farm-wide
//
// Anything that changes state needs the bearer token (Authorization: Bearer
// TOKEN), compared in constant time; with no token configured, such requests
// are refused. Reading needs no token: bind the listener to loopback or a
// management network.
//
// Readiness follows the listeners only. A farm outage degrades every node at
// once (each keeps serving from its local cache); failing /readyz for it
// would pull the whole farm out of its load balancer. So does a node that
// has yet to read the farm's revocations (its read failed at start, and is
// retried): it serves, but resumes nothing from the farm until it has
// read them. Both show in /healthz (status "degraded", with the reason) and
// in the metrics instead, unless Config.Strict asks for them to fail
// /readyz too. Neither fails /healthz, which is liveness.
//
// Start with Config and New: the Handler is an http.Handler, served by
// cmd/tlsfarm on the admin listener. Its inputs are the session cache and
// funcs or small interfaces (FarmNode, Config.Proxy, Config.Exports), so it
// knows no daemon.
package admin

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// defaultRevokeTimeout bounds a farm-wide revocation.
const defaultRevokeTimeout = 5 * time.Second

// A FarmNode is what the admin API needs of the node's farm membership;
// *farm.Node implements it.
type FarmNode interface {
	// Metrics returns the node's samples (tlsfarm_farm_*), exported as
	// they are and read by /healthz.
	Metrics() []metric.Sample
	// RevokeSession revokes the session id farm-wide (see
	// farm.Node.RevokeSession).
	RevokeSession(ctx context.Context, id session.ID) (farm.RevokeStatus, error)
	// RevokeApplyWait returns how long RevokeSession waits, after the
	// farm carried a revocation, before it reports it applied (see
	// farm.Node.RevokeApplyWait).
	RevokeApplyWait() time.Duration
}

// A Config configures the admin API. Cache is required; every other field
// may be left zero, which leaves out what it feeds.
type Config struct {
	// NodeName names the node in /healthz.
	NodeName string

	// Cache is the node's session cache.
	Cache *session.Cache

	// Node is the node's farm membership (a *farm.Node); nil when it
	// serves alone. DELETE /sessions/{id} revokes through it, farm-wide;
	// /healthz and the metrics report its samples.
	Node FarmNode

	// Ring holds the node's ticket keys: their epoch and age are reported.
	Ring *ticket.Ring

	// Rotation, if set, returns the farm-wide key rotation's samples
	// (farm.Rotator.Metrics).
	Rotation func() []metric.Sample

	// Exports, if set, returns the state of each key export target of
	// "tlsfarm keys": /healthz lists them (and says "degraded" while one
	// fails), and the metrics report them by target.
	Exports func() []ExportStatus

	// Proxy, if set, returns the TLS terminator's counters.
	Proxy func() ProxyStats

	// Ready reports whether the listeners are up: nil means ready. If nil,
	// the node is always ready.
	Ready func() error

	// Strict makes /readyz fail while the farm transport is down or the
	// node has yet to read the farm's revocations.
	Strict bool

	// Token returns the bearer token that state changes need (it may change
	// on a reload). If it is nil or returns "", state changes are refused.
	Token func() string

	// RevokeTimeout bounds how long DELETE /sessions/{id} waits for the
	// farm (default 5s). The handler never waits more than 1s plus the
	// node's own wait before it says applied (farm.Node.RevokeApplyWait:
	// the farm's MaxDeliveryLag on a bus that marks its delivery), whatever
	// RevokeTimeout says: a revocation that has not reached the farm by
	// then is in force on this node and answered 202 "pending" (the node
	// retries it).
	RevokeTimeout time.Duration

	// Collectors are registered with the metrics registry as well.
	Collectors []prometheus.Collector

	// Logger receives a line for each revocation, and one for each
	// distinct error of a /metrics scrape (default slog.Default()).
	Logger *slog.Logger
}

// ProxyStats are the TLS terminator's counters, as the metrics report them.
type ProxyStats struct {
	Handshakes        []Handshakes      // completed, by version and full or resumed
	HandshakeFailures map[string]uint64 // by reason, such as "timeout"
	Accepted          uint64            // connections accepted
	Open              int               // TCP connections open now (QUICStats.Open: HTTP/3's)
	UpstreamRequests  uint64            // requests sent to HTTP upstreams
	UpstreamErrors    uint64            // requests and streams an upstream could not take
	Reloads           uint64            // configuration reloads applied
	ReloadFailures    uint64            // reloads rejected

	// QUIC, if set, holds the HTTP/3 listeners' counters.
	QUIC *QUICStats

	// Samples are the terminator's other samples (proxy.Server.Metrics:
	// its WebSockets'), exported as they are.
	Samples []metric.Sample
}

// QUICStats are the HTTP/3 listeners' counters, as the metrics report them.
type QUICStats struct {
	FullHandshakes, ResumedHandshakes uint64            // completed, without and with resumption
	EarlyDataOffered                  uint64            // client hellos offering 0-RTT
	EarlyDataAccepted                 uint64            // connections that accepted it
	EarlyDataRejected                 map[string]uint64 // by reason: replay, store_unavailable, store_lost, disabled, too_old, other
	EarlyRequests                     uint64            // requests served from early data
	TooEarly                          uint64            // 425 responses
	Open                              int               // QUIC connections open now, handshakes under way included
}

// Handshakes counts the completed handshakes of one TLS version.
type Handshakes struct {
	Version string // "TLS 1.3"
	Resumed bool   // whether these handshakes resumed a session
	Count   uint64 // completed handshakes
}

// A Handler serves the admin API.
type Handler struct {
	cfg Config
	mux *http.ServeMux
	reg *prometheus.Registry
}

// New returns the admin API for cfg.
func New(cfg Config) (*Handler, error) {
	if cfg.Cache == nil {
		return nil, errors.New("admin: Config.Cache is required")
	}
	if cfg.RevokeTimeout <= 0 {
		cfg.RevokeTimeout = defaultRevokeTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	h := &Handler{cfg: cfg, mux: http.NewServeMux(), reg: prometheus.NewRegistry()}
	cs := append([]prometheus.Collector{
		newCollector(&h.cfg),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}, cfg.Collectors...)
	for _, c := range cs {
		if err := h.reg.Register(newSafeCollector(c, cfg.Logger)); err != nil {
			return nil, err
		}
	}
	// A collector that fails loses its own metrics, not the scrape: the
	// rest is served (200), and the error goes to the log, never to the
	// caller, who needs no token.
	h.mux.Handle("GET /metrics", promhttp.HandlerFor(h.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      &scrapeLog{log: cfg.Logger},
	}))
	h.mux.HandleFunc("GET /healthz", h.healthz)
	h.mux.HandleFunc("GET /readyz", h.readyz)
	h.mux.HandleFunc("GET /sessions", h.sessions)
	h.mux.HandleFunc("DELETE /sessions/{id}", h.authorized(h.revoke))
	return h, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	h.mux.ServeHTTP(w, r)
}
