package admin

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// syncBuffer is a log destination safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestHealthDegradedWithin2sOfPausedRedis freezes the farm's Redis
// (SIGSTOP: no reset, no answer): /healthz says degraded and
// tlsfarm_farm_connected is 0 within 2s, with one warn line; both recover
// when Redis continues.
func TestHealthDegradedWithin2sOfPausedRedis(t *testing.T) {
	srv := redistest.Start(t)
	var logs syncBuffer
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
