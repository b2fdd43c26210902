package caddytlsfarm

import (
	"crypto/tls"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/keyexport"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// TestTicketIssuedBeforeFarmKeysStillResumes starts a Caddy whose store
// answers only after its join_timeout, in a farm whose set (of another
// Caddy) has rotated once, so Caddy serves with keys of its own at first.
// Its TLS 1.2 and 1.3 tickets of that time must still resume, on it and on
// the other Caddy, once it has the farm's keys: it merges its keys into the
// farm's set. Before, Initialize polled the ring's epoch instead of
// Rotator.WaitReady, the rotator never learnt that Caddy had served, and
// Caddy took the farm's set as it was, dropping its own keys.
//
// It also checks the order of the keys each Caddy gets: the farm's own
// previous keys before the merged ones (ticket.Ring.StateByUse), so that
// crypto/tls tries the keys most tickets are under first.
func TestTicketIssuedBeforeFarmKeysStillResumes(t *testing.T) {
	url := redistest.URL(t)
	host := strings.TrimPrefix(url, "redis://")
	host, db, _ := strings.Cut(host, "/")
	proxy := nettest.NewProxy(t, host)
	slowURL := "redis://" + proxy.Addr + "/" + db

	dir := t.TempDir()
	secret := filepath.Join(dir, "farm.secret")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(0)); err != nil {
		t.Fatal(err)
	}
	cert, key, pool := writeCert(t, dir)
	name := redistest.Farm(t)
	// keep 4 × 2s: every key the test uses lives well past its end.
	settings := map[string]any{"rotation_interval": "2s", "keep": 4, "join_timeout": "300ms"}

	farmAddr, farmCaddy := startCaddyWith(t, 0, url, name, secret, cert, key, settings)
	deadline := time.Now().Add(10 * time.Second)
	for farmCaddy.ring.Status().Epoch < 2 { // one rotation: the farm has a previous key
		if time.Now().After(deadline) {
			t.Fatal("the farm did not rotate within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}

	proxy.Freeze()
	addr, late := startCaddyWith(t, 1, slowURL, name, secret, cert, key, settings)
	own := late.ring.State()
	if own.Epoch != 0 {
		proxy.Thaw()
		t.Fatalf("the Caddy behind the frozen store has the farm's keys (epoch %d)", own.Epoch)
	}
	// Two tickets of each version: one to resume on each Caddy.
	var clients []*tls.Config
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for range 2 {
			cfg := &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: v, MaxVersion: v,
				ClientSessionCache: tls.NewLRUClientSessionCache(1)}
			if get(t, addr, cfg) {
				t.Fatal("the first handshake resumed")
			}
			clients = append(clients, cfg)
		}
	}
	// Well within the store client's timeouts: the rotator's first poll
	// succeeds once the store answers.
	proxy.Thaw()

	deadline = time.Now().Add(10 * time.Second)
	for late.epoch.Load() == 0 || late.epoch.Load() != late.ring.Status().Epoch ||
		farmCaddy.epoch.Load() != late.ring.Status().Epoch {
		if time.Now().After(deadline) {
			t.Fatalf("the Caddys have no common farm key set within 10s (%d, %d)", late.epoch.Load(), farmCaddy.epoch.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // Caddy applies what Next sends at once; let both take it

	for i, cfg := range clients {
		to, toName := addr, "caddy-1, which issued it"
		if i%2 == 1 {
			to, toName = farmAddr, "caddy-0"
		}
		if !get(t, to, cfg) {
			t.Errorf("%s: a ticket caddy-1 issued before it had the farm's keys did not resume on %s",
				tls.VersionName(cfg.MaxVersion), toName)
		}
	}

	// The farm's Caddy holds caddy-1's key as a merged key: crypto/tls
	// gets it after the farm's own previous keys.
	st := farmCaddy.ring.State()
	if !slices.Contains(st.Previous, own.Current) {
		t.Fatalf("the farm's set lacks caddy-1's key after the merge")
	}
	wantKeys := []ticket.Key{st.Current, st.Next}
	for _, k := range st.Previous {
		if k != own.Current {
			wantKeys = append(wantKeys, k)
		}
	}
	wantKeys = append(wantKeys, own.Current)
	if len(wantKeys) < 4 {
		t.Fatalf("the farm had no previous key of its own at the merge: %d keys", len(wantKeys))
	}
	var want [][32]byte
	for _, k := range wantKeys {
		want = append(want, keyexport.CaddyKey(k))
	}
	if got := farmCaddy.keys(); !slices.Equal(got, want) {
		t.Errorf("caddy-0 got its keys in another order than by use: the merged key is at %d of %d, want last",
			slices.Index(got, keyexport.CaddyKey(own.Current)), len(got))
	}
}
