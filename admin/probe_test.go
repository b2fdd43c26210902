package admin

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/logtest"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestHealthDegradedWithin2sOfPausedRedis freezes the farm's Redis
// (SIGSTOP: no reset, no answer): /healthz says degraded and
// tlsfarm_farm_connected is 0 within 2s, with one warn line; both recover
// when Redis continues.
func TestHealthDegradedWithin2sOfPausedRedis(t *testing.T) {
	srv := redistest.Start(t)
	var logs logtest.Buffer
	name := redistest.Farm(t)
	srvH, _ := newHandler(t, func(c *Config) {
		tr, err := redisbus.Open(srv.URL(), name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		n, err := farm.Join(t.Context(), farm.Config{
			Farm: name, Secrets: []farm.Secret{farm.NewSecret(0)}, Cache: c.Cache, Bus: tr, Store: tr,
			Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		c.Node = n
	})
	status := func() string {
		_, body := nettest.Do(t, "GET", srvH.URL+"/healthz", "")
		var h Health
		json.Unmarshal([]byte(body), &h)
		return h.Status
	}
	deadline := time.Now().Add(10 * time.Second)
	for status() != "ok" {
		if time.Now().After(deadline) {
			t.Fatal("never healthy")
		}
		time.Sleep(20 * time.Millisecond)
	}

	srv.Pause()
	paused := time.Now()
	defer srv.Resume()
	for status() != "degraded" {
		if time.Since(paused) > 5*time.Second {
			t.Fatal("/healthz still not degraded 5s after Redis stopped")
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(paused)
	_, metrics := nettest.Do(t, "GET", srvH.URL+"/metrics", token)
	t.Logf("/healthz degraded %v after SIGSTOP", took)
	if took > 2*time.Second {
		t.Errorf("/healthz took %v to degrade, want at most 2s", took)
	}
	if !strings.Contains(metrics, "tlsfarm_farm_connected 0") {
		t.Errorf("tlsfarm_farm_connected is not 0 with Redis stopped")
	}
	time.Sleep(time.Second) // more failed probes: still one line
	if n := strings.Count(logs.String(), "does not answer"); n != 1 {
		t.Errorf("%d warn lines for one outage, want 1:\n%s", n, logs.String())
	}

	srv.Resume()
	resumed := time.Now()
	for status() != "ok" {
		if time.Since(resumed) > 5*time.Second {
			t.Fatal("/healthz not ok again 5s after Redis continued")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := strings.Count(logs.String(), "answers again"); n != 1 {
		t.Errorf("%d recovery lines, want 1:\n%s", n, logs.String())
	}
}

// heldTombstones is a Redis transport whose reads of the farm's
// revocations wait until release is closed (or their context ends), as a
// store that is hung for them at a node's start.
type heldTombstones struct {
	*redisbus.Transport
	release <-chan struct{}
}

func (h heldTombstones) SetMembers(ctx context.Context, key string) ([][]byte, error) {
	select {
	case <-h.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return h.Transport.SetMembers(ctx, key)
}

// TestHealthSaysRevocationsUnread: a node whose read of the farm's
// revocations fails at Join (it resumes nothing from the farm until a read
// succeeds) is live and, unless strict, ready; /healthz says "degraded"
// with the reason, though its transport is up. Once it reads them, /healthz
// says "ok" and a strict node is ready.
func TestHealthSaysRevocationsUnread(t *testing.T) {
	redis := redistest.Start(t)
	for _, strict := range []bool{false, true} {
		release := make(chan struct{})
		var node *farm.Node
		srv, _ := newHandler(t, func(c *Config) {
			c.Strict = strict
			name := redistest.Farm(t)
			tr, err := redisbus.Open(redis.URL(), name)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			h := heldTombstones{tr, release}
			node, err = farm.Join(t.Context(), farm.Config{
				Farm: name, Secrets: []farm.Secret{farm.NewSecret(0)}, Cache: c.Cache, Bus: h, Store: h,
				OpTimeout: 300 * time.Millisecond,
				Logger:    slog.New(slog.DiscardHandler),
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { node.Close() })
			c.Node = node
		})
		health := func() (int, Health, string) {
			code, body := nettest.Do(t, "GET", srv.URL+"/healthz", "")
			var h Health
			if err := json.Unmarshal([]byte(body), &h); err != nil || h.Farm == nil {
				t.Fatalf("strict=%v: healthz %d %s", strict, code, body)
			}
			return code, h, body
		}
		deadline := time.Now().Add(10 * time.Second)
		for _, h, _ := health(); !h.Farm.Connected; _, h, _ = health() {
			if time.Now().After(deadline) {
				t.Fatalf("strict=%v: never connected", strict)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if node.RevocationsKnown() {
			t.Fatalf("strict=%v: revocations known, though never read", strict)
		}
		code, h, body := health()
		if code != 200 || h.Status != "degraded" || h.Farm.RevocationsKnown || !h.Farm.Connected ||
			len(h.Reasons) != 1 || h.Reasons[0] != reasonRevsUnread {
			t.Errorf("strict=%v: healthz with the revocations unread: %d %s", strict, code, body)
		}
		code, body = nettest.Do(t, "GET", srv.URL+"/readyz", "")
		if want := map[bool]int{false: 200, true: 503}[strict]; code != want {
			t.Errorf("strict=%v: readyz with the revocations unread: %d %s, want %d", strict, code, body, want)
		}
		if strict && !strings.Contains(body, reasonRevsUnread) {
			t.Errorf("strict=%v: readyz does not say why: %s", strict, body)
		}
		if _, metrics := nettest.Do(t, "GET", srv.URL+"/metrics", ""); !strings.Contains(metrics, "tlsfarm_farm_revocations_known 0") {
			t.Errorf("strict=%v: tlsfarm_farm_revocations_known is not 0", strict)
		}

		close(release)
		deadline = time.Now().Add(10 * time.Second)
		for !node.RevocationsKnown() {
			if time.Now().After(deadline) {
				t.Fatalf("strict=%v: the revocations never read after the store answered", strict)
			}
			time.Sleep(20 * time.Millisecond)
		}
		code, h, body = health()
		if code != 200 || h.Status != "ok" || !h.Farm.RevocationsKnown || len(h.Reasons) != 0 {
			t.Errorf("strict=%v: healthz once the revocations are read: %d %s", strict, code, body)
		}
		if code, body := nettest.Do(t, "GET", srv.URL+"/readyz", ""); code != 200 {
			t.Errorf("strict=%v: readyz once the revocations are read: %d %s", strict, code, body)
		}
	}
}
