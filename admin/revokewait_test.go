package admin

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestRevokeWaitsForDeliveryLag: with carried sessions, RevokeSession
// waits the farm's MaxDeliveryLag before it says applied, so DELETE
// /sessions/{id} allows that much on top of its own second. With a
// bound of 1.5s it answered 202 "pending" for a revocation the farm
// applied at once; now 200 "applied", after the bound.
func TestRevokeWaitsForDeliveryLag(t *testing.T) {
	const lag = 1500 * time.Millisecond
	srv, cache, node := newFarmHandler(t, farm.Config{WriteThrough: true, CarrySessions: true, MaxDeliveryLag: lag})
	if got := node.RevokeApplyWait(); got != lag {
		t.Fatalf("RevokeApplyWait = %v, want MaxDeliveryLag %v", got, lag)
	}
	id := insert(t, cache)
	t0 := time.Now()
	code, body := nettest.Do(t, "DELETE", srv.URL+"/sessions/"+id.String(), token)
	took := time.Since(t0)
	if code != http.StatusOK || !strings.Contains(body, `"farm": "applied"`) {
		t.Fatalf("revoke with carried sessions and a delivery bound of %v: %d %s after %v, want 200 applied", lag, code, body, took.Round(time.Millisecond))
	}
	if took < lag {
		t.Fatalf("applied after %v, before the delivery bound %v", took.Round(time.Millisecond), lag)
	}
}

// TestRevokeUnknownRecorded: DELETE /sessions/{id} of an ID this farm
// issued but that no reachable node knows (neither the node nor the
// store; past the young window) answers 202 "recorded", with a note that
// the node holding it revokes its chain when it comes back: the farm's
// node records the revocation by ID (farm.RevokeRecorded). Before, 404.
// A forged ID is still 404.
func TestRevokeUnknownRecorded(t *testing.T) {
	const young = 300 * time.Millisecond
	srv, cache, _ := newFarmHandler(t, farm.Config{WriteThrough: true, WriteThroughTimeout: young})
	unknown := cache.NewID()
	forged := unknown
	forged[25] ^= 1
	time.Sleep(young + 100*time.Millisecond)
	code, body := nettest.Do(t, "DELETE", srv.URL+"/sessions/"+unknown.String(), token)
	if code != http.StatusAccepted || !strings.Contains(body, `"farm": "recorded"`) || !strings.Contains(body, "revokes its chain when it comes back") {
		t.Fatalf("revoke of an ID no node knows: %d %s, want 202 recorded with a note", code, body)
	}
	if code, body := nettest.Do(t, "DELETE", srv.URL+"/sessions/"+forged.String(), token); code != http.StatusNotFound {
		t.Fatalf("revoke of a forged ID: %d %s, want 404", code, body)
	}
}

// newFarmHandler is newHandler with the cache in a farm node of its own
// on the shared Redis (bus and store, a farm name unique to the test),
// joined with cfg's settings; it returns once the node reaches the farm.
func newFarmHandler(t *testing.T, cfg farm.Config) (*httptest.Server, *session.Cache, *farm.Node) {
	t.Helper()
	url := redistest.URL(t)
	name := redistest.Farm(t)
	var node *farm.Node
	srv, cache := newHandler(t, func(c *Config) {
		tr, err := redisbus.Open(url, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		cfg.Farm, cfg.Secrets, cfg.Cache, cfg.Bus, cfg.Store = name, []farm.Secret{farm.NewSecret(0)}, c.Cache, tr, tr
		n, err := farm.Join(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		c.Node, node = n, n
	})
	deadline := time.Now().Add(10 * time.Second)
	for !node.Connected() {
		if time.Now().After(deadline) {
			t.Fatal("the node did not reach the farm")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return srv, cache, node
}
