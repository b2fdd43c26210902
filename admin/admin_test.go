package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

const token = "0123456789abcdef-test-token"

func newHandler(t *testing.T, edit func(*Config)) (*httptest.Server, *session.Cache) {
	t.Helper()
	cache, err := session.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	ring, err := ticket.NewRing(ticket.RingConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{NodeName: "n1", Cache: cache, Ring: ring, Token: func() string { return token }}
	if edit != nil {
		edit(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, cache
}

// insert puts a session in the cache and returns its ID.
func insert(t *testing.T, cache *session.Cache) session.ID {
	t.Helper()
	id := cache.NewID()
	if err := cache.Insert(id, session.Record{State: []byte("state"), Expires: time.Now().Add(time.Hour)}, session.OriginAPI); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestMetrics(t *testing.T) {
	srv, cache := newHandler(t, func(c *Config) {
		c.Proxy = func() ProxyStats {
			return ProxyStats{
				Handshakes:        []Handshakes{{Version: "TLS 1.3", Count: 3}, {Version: "TLS 1.3", Resumed: true, Count: 2}},
				HandshakeFailures: map[string]uint64{"timeout": 1},
				UpstreamErrors:    4,
				Samples: []metric.Sample{{
					Name: "tlsfarm_websockets_open", Help: "WebSockets open now.", Kind: metric.Gauge,
					Labels: []metric.Label{{Name: "proto", Value: "h2"}}, Value: 5,
				}},
			}
		}
	})
	insert(t, cache)
	code, body := nettest.Do(t, "GET", srv.URL+"/metrics", "")
	if code != 200 {
		t.Fatalf("status %d", code)
	}
	for _, want := range []string{
		`tlsfarm_handshakes_total{kind="full",version="TLS 1.3"} 3`,
		`tlsfarm_handshakes_total{kind="resumed",version="TLS 1.3"} 2`,
		`tlsfarm_handshake_failures_total{reason="timeout"} 1`,
		`tlsfarm_upstream_errors_total 4`,
		`tlsfarm_websockets_open{proto="h2"} 5`,
		`tlsfarm_cache_sessions 1`,
		`tlsfarm_cache_inserts_total 1`,
		`tlsfarm_ticket_key_epoch 0`,
		`tlsfarm_ticket_keys 2`,
		`tlsfarm_listeners_ready 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(body, "tlsfarm_farm_") {
		t.Error("farm metrics without a farm")
	}
}

func TestRevoke(t *testing.T) {
	srv, cache := newHandler(t, nil)
	id := insert(t, cache)
	url := srv.URL + "/sessions/" + id.String()

	if code, _ := nettest.Do(t, "DELETE", url, ""); code != http.StatusUnauthorized {
		t.Errorf("without a token: %d", code)
	}
	if code, _ := nettest.Do(t, "DELETE", url, token+"x"); code != http.StatusUnauthorized {
		t.Errorf("with a wrong token: %d", code)
	}
	if code, _ := nettest.Do(t, "DELETE", srv.URL+"/sessions/zz", token); code != http.StatusBadRequest {
		t.Errorf("malformed ID: %d", code)
	}
	forged := id
	forged[25] ^= 1
	if code, _ := nettest.Do(t, "DELETE", srv.URL+"/sessions/"+forged.String(), token); code != http.StatusNotFound {
		t.Errorf("forged ID: %d", code)
	}
	if code, _ := nettest.Do(t, "DELETE", srv.URL+"/sessions/"+cache.NewID().String(), token); code != http.StatusNotFound {
		t.Errorf("unknown ID: %d", code)
	}
	code, body := nettest.Do(t, "DELETE", url, token)
	if code != http.StatusOK || !strings.Contains(body, `"revoked": true`) {
		t.Fatalf("revoke: %d %s", code, body)
	}
	if _, ok := cache.GetBuffer(id, nil); ok {
		t.Error("session still cached")
	}
	if code, _ := nettest.Do(t, "DELETE", url, token); code != http.StatusNotFound {
		t.Errorf("second revoke: %d", code)
	}
	if code, _ := nettest.Do(t, "GET", url, token); code != http.StatusMethodNotAllowed {
		t.Errorf("GET on a session: %d", code)
	}
}

func TestRevokeRefusedWithoutToken(t *testing.T) {
	srv, cache := newHandler(t, func(c *Config) { c.Token = func() string { return "" } })
	id := insert(t, cache)
	code, body := nettest.Do(t, "DELETE", srv.URL+"/sessions/"+id.String(), "")
	if code != http.StatusForbidden || !strings.Contains(body, "no admin token") {
		t.Errorf("%d %s", code, body)
	}
	if _, ok := cache.GetBuffer(id, nil); !ok {
		t.Error("session removed")
	}
}

func TestSessions(t *testing.T) {
	srv, cache := newHandler(t, nil)
	insert(t, cache)
	code, body := nettest.Do(t, "GET", srv.URL+"/sessions", "")
	var got SessionsResponse
	if err := json.Unmarshal([]byte(body), &got); code != 200 || err != nil {
		t.Fatalf("%d %v %s", code, err, body)
	}
	size, _ := metric.Value(got.Cache, "tlsfarm_cache_sessions")
	inserts, _ := metric.Value(got.Cache, "tlsfarm_cache_inserts_total")
	if size != 1 || inserts != 1 || got.Farm {
		t.Errorf("sessions = %+v", got)
	}
	// The samples read as words, as the rest of the API does.
	for _, want := range []string{`"name": "tlsfarm_cache_sessions"`, `"kind": "gauge"`, `"kind": "counter"`} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /sessions lacks %s:\n%s", want, body)
		}
	}
}

// downBus is a farm transport that never connects.
type downBus struct{}

func (downBus) Publish(context.Context, ...[]byte) error { return errors.New("down") }
func (downBus) Subscribe(ctx context.Context, _ func([]byte), state func(bool, error)) error {
	<-ctx.Done()
	return ctx.Err()
}

// TestReadinessIgnoresFarmOutageUnlessStrict checks that a farm outage makes
// the node degraded but ready, and not ready only in strict mode.
func TestReadinessIgnoresFarmOutageUnlessStrict(t *testing.T) {
	for _, strict := range []bool{false, true} {
		srv, _ := newHandler(t, func(c *Config) {
			c.Strict = strict
			n, err := farm.Join(t.Context(), farm.Config{Farm: "t", Secrets: []farm.Secret{farm.NewSecret(0)}, Cache: c.Cache, Bus: downBus{}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { n.Close() })
			c.Node = n
		})
		code, body := nettest.Do(t, "GET", srv.URL+"/healthz", "")
		var h Health
		json.Unmarshal([]byte(body), &h)
		if code != 200 || h.Status != "degraded" || h.Farm == nil || h.Farm.Connected || h.Farm.Strict != strict ||
			!h.Farm.RevocationsKnown || len(h.Reasons) != 1 || h.Reasons[0] != reasonFarmDown {
			t.Errorf("strict=%v: healthz %d %s", strict, code, body)
		}
		code, body = nettest.Do(t, "GET", srv.URL+"/readyz", "")
		if want := map[bool]int{false: 200, true: 503}[strict]; code != want {
			t.Errorf("strict=%v: readyz %d %s, want %d", strict, code, body, want)
		}
		_, metrics := nettest.Do(t, "GET", srv.URL+"/metrics", "")
		if !strings.Contains(metrics, "tlsfarm_farm_connected 0") || !strings.Contains(metrics, "tlsfarm_farm_lag_seconds_count 0") {
			t.Errorf("strict=%v: farm metrics missing", strict)
		}
	}
}

func TestNotReadyWhenListenersAreDown(t *testing.T) {
	srv, _ := newHandler(t, func(c *Config) { c.Ready = func() error { return errors.New("shutting down") } })
	if code, body := nettest.Do(t, "GET", srv.URL+"/readyz", ""); code != 503 || !strings.Contains(body, "shutting down") {
		t.Errorf("readyz %d %s", code, body)
	}
	if code, body := nettest.Do(t, "GET", srv.URL+"/healthz", ""); code != 503 || !strings.Contains(body, `"unavailable"`) {
		t.Errorf("healthz %d %s", code, body)
	}
}

// TestDrainingIsAliveNotReady: while the listeners drain (Config.Ready
// returns ErrDraining, wrapped), /readyz fails and /healthz answers 200
// "draining": before, it answered 503, and a liveness check had the
// process killed in the middle of its graceful shutdown.
func TestDrainingIsAliveNotReady(t *testing.T) {
	srv, _ := newHandler(t, func(c *Config) {
		c.Ready = func() error { return fmt.Errorf("%w: proxy: shutting down", ErrDraining) }
	})
	if code, body := nettest.Do(t, "GET", srv.URL+"/readyz", ""); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("readyz %d %s", code, body)
	}
	if code, body := nettest.Do(t, "GET", srv.URL+"/healthz", ""); code != 200 || !strings.Contains(body, `"draining"`) || !strings.Contains(body, `"ready": false`) {
		t.Errorf("healthz %d %s", code, body)
	}
}

func TestTokenEqual(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want bool
	}{{"abc", "abc", true}, {"abc", "abd", false}, {"abc", "abcd", false}, {"", "", true}} {
		if got := tokenEqual(tt.a, tt.b); got != tt.want {
			t.Errorf("tokenEqual(%q, %q) = %v", tt.a, tt.b, got)
		}
	}
}

// TestRevokePendingWhileFarmDown: with the farm's bus down, DELETE
// /sessions/{id} revokes locally and answers 202 "pending", and the
// pending-revocations metric shows it.
func TestRevokePendingWhileFarmDown(t *testing.T) {
	srv, cache := newHandler(t, func(c *Config) {
		n, err := farm.Join(t.Context(), farm.Config{Farm: "t", Secrets: []farm.Secret{farm.NewSecret(0)}, Cache: c.Cache, Bus: downBus{}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		c.Node = n
	})
	id := insert(t, cache)
	code, body := nettest.Do(t, "DELETE", srv.URL+"/sessions/"+id.String(), token)
	if code != http.StatusAccepted || !strings.Contains(body, `"farm": "pending"`) {
		t.Fatalf("revoke with the farm down: %d %s, want 202 pending", code, body)
	}
	if _, ok := cache.GetBuffer(id, nil); ok {
		t.Fatal("the session is still cached after a pending revocation")
	}
	if _, metrics := nettest.Do(t, "GET", srv.URL+"/metrics", ""); !strings.Contains(metrics, "tlsfarm_farm_pending_revocations 1") {
		t.Fatal("pending revocation not in the metrics")
	}
}

// TestExportsInHealthAndMetrics checks that tlsfarm keys' export targets
// show in /healthz, which says "degraded" while one fails, and in the
// metrics by target.
func TestExportsInHealthAndMetrics(t *testing.T) {
	now := time.Now()
	srv, _ := newHandler(t, func(c *Config) {
		c.Exports = func() []ExportStatus {
			return []ExportStatus{
				{Target: "nginx:/run/k", Epoch: 7, OK: true, LastAttempt: now, LastSuccess: now, Exports: 3},
				{Target: "on-change", Epoch: 6, OK: false, Error: "exit status 1", LastAttempt: now, Exports: 2, Failures: 4},
			}
		}
	})
	code, body := nettest.Do(t, "GET", srv.URL+"/healthz", "")
	var h Health
	if err := json.Unmarshal([]byte(body), &h); err != nil || code != 200 {
		t.Fatalf("healthz: %d %s", code, body)
	}
	if h.Status != "degraded" || len(h.Exports) != 2 || h.Exports[1].Error != exportErrorHidden ||
		len(h.Reasons) != 1 || h.Reasons[0] != reasonExports {
		t.Errorf("healthz: %s", body)
	}
	_, body = nettest.Do(t, "GET", srv.URL+"/metrics", "")
	for _, want := range []string{
		`tlsfarm_key_export_ok{target="nginx:/run/k"} 1`,
		`tlsfarm_key_export_ok{target="on-change"} 0`,
		`tlsfarm_key_export_epoch{target="nginx:/run/k"} 7`,
		`tlsfarm_key_export_failures_total{target="on-change"} 4`,
		`tlsfarm_key_exports_total{target="nginx:/run/k"} 3`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
