package main

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/config"
	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestFarmNodeNeverFallsBackToALocalStrikeRegister: a farm node's HTTP/3
// listeners strike 0-RTT tickets in the farm's register, never in one of
// the node's own (which would let each node accept a ticket's early data
// once). QUIC keys that cannot be derived from the farm secret refuse the
// configuration instead of leaving the node on its own register.
func TestFarmNodeNeverFallsBackToALocalStrikeRegister(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	name := redistest.Farm(t)
	secretFile, _, _, _ := farmFiles(t)
	secrets, err := farm.LoadSecrets(secretFile)
	if err != nil {
		t.Fatal(err)
	}
	cache, err := session.New(&session.Config{Capacity: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	bus, store, closer, err := openTransport(url, name)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	node, err := farm.Join(ctx, farm.Config{Farm: name, NodeName: "strike", Secrets: secrets, Cache: cache, Bus: bus, Store: store, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()

	d := &daemon{node: node, log: log}
	cfg := func(secrets []farm.Secret) *config.Config {
		return &config.Config{
			Farm:      config.Farm{Name: name, Secrets: secrets},
			Listeners: []config.Listener{{Address: "127.0.0.1:0", HTTP3: true, EarlyData: true}},
		}
	}
	strikes := func() float64 {
		var n float64
		for _, s := range node.Metrics() {
			if s.Name == "tlsfarm_farm_strikes_total" {
				n += s.Value
			}
		}
		return n
	}

	pc, err := d.proxyConfig(cfg(secrets))
	if err != nil {
		t.Fatalf("with the farm secret: %v", err)
	}
	if pc.AntiReplay == nil || pc.QUICTokenKey == nil || pc.QUICStatelessResetKey == nil {
		t.Fatal("a farm node's HTTP/3 settings lack the farm's register or keys")
	}
	before := strikes()
	if fresh, _ := pc.AntiReplay(ctx, []byte("ticket identity"), time.Now(), time.Minute); fresh {
		// The register began as the node joined: a ticket of this second
		// is within the clock skew allowance, so it is refused.
		t.Error("early data accepted for a ticket the register cannot vouch for")
	}
	if after := strikes(); after != before+1 {
		t.Errorf("the node counted %v strikes, want %v: the listeners do not use the farm's register", after, before+1)
	}

	for _, bad := range []struct {
		name    string
		secrets []farm.Secret
	}{
		{"NoSecret", nil},
		{"ShortSecret", []farm.Secret{{ID: 1, Bytes: make([]byte, 8)}}},
	} {
		pc, err := d.proxyConfig(cfg(bad.secrets))
		if err == nil || !strings.Contains(err.Error(), "QUIC keys") {
			t.Errorf("%s: proxyConfig error %v (AntiReplay set: %v), want one about the QUIC keys", bad.name, err, pc.AntiReplay != nil)
		}
	}
}
