package main

import (
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/keyexport"
)

// TestKeysAdminCutsQuietConnections does to the tlsfarm keys agent's admin
// listener what TestAdminCutsQuietConnections and
// TestAdminCutsScraperThatStopsReading do to serve's: a request whose body
// stalls, and a client that sends many /metrics requests and reads
// nothing. Each connection must be closed within the admin API's 10 s
// bounds, not held (with its goroutine and file descriptor) for as long as
// the client stays: the agent writes key files and talks to the farm with
// the same process's descriptors.
func TestKeysAdminCutsQuietConnections(t *testing.T) {
	t.Parallel()
	secret, _, _, _ := farmFiles(t)
	a := startAgent(t, "keys", append(farmArgs(redistest.URL(t), secret, redistest.Farm(t)),
		"-export", "file:"+filepath.Join(privateDir(t), "keys.json"))...)
	waitExported(t, a, 1, 10*time.Second)

	t.Run("stalled body", func(t *testing.T) {
		t.Parallel()
		c, err := net.Dial("tcp", a.adminAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		t0 := time.Now()
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: admin\r\nContent-Length: 100\r\n\r\nab")
		_, err = io.Copy(io.Discard, c)
		if took := time.Since(t0); err != nil || took > 13*time.Second {
			t.Errorf("connection closed after %v (want within 13s): %v", took, err)
		}
	})
	t.Run("scraper that stops reading", func(t *testing.T) {
		t.Parallel()
		scrapeWithoutReading(t, a.adminAddr)
	})
}

// TestKeysAgentStartedDuringOutageMergesNothing starts a tlsfarm keys
// agent while the farm's store is unreachable, then lets it through. The
// agent never encrypts a ticket with the keys its ring drew before it had
// the farm's (it exports no key set of epoch 0), so it must simply take
// the farm's set: before, it counted as a node that had served with keys of
// its own, and merged them into the farm's set, where every member then
// held them as decrypt-only keys for -ticket-keep rotations, under a
// warning that the store had lost its key set.
func TestKeysAgentStartedDuringOutageMergesNothing(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	secret, _, _, _ := farmFiles(t)
	name := redistest.Farm(t)
	a := startAgent(t, "keys-a", append(farmArgs(url, secret, name), "-export", "file:"+filepath.Join(privateDir(t), "keys.json"))...)
	waitExported(t, a, 1, 10*time.Second)

	p := nettest.NewProxy(t, strings.TrimSuffix(strings.TrimPrefix(url, "redis://"), "/0"))
	p.Cut()
	b := startAgent(t, "keys-b", append(farmArgs("redis://"+p.Addr+"/0", secret, name), "-export", "file:"+filepath.Join(privateDir(t), "keys.json"))...)
	waitUntil(t, 10*time.Second, func() bool {
		return farmtest.Counter(b.rotator.Metrics(), "tlsfarm_ticket_rotation_store_errors_total") > 0
	}, "the agent saw no store error")
	own := b.ring.State()
	if own.Epoch != 0 {
		t.Fatalf("the agent holds epoch %d through a cut store", own.Epoch)
	}
	p.Restore()
	waitExported(t, b, 1, 10*time.Second)
	time.Sleep(time.Second) // a merge, if any, reaches the other agent
	if n := farmtest.Counter(b.rotator.Metrics(), "tlsfarm_ticket_key_sets_merged_total"); n != 0 {
		t.Errorf("the agent merged its own keys into the farm's set %v times", n)
	}
	for _, k := range a.ring.State().Keys() {
		if k == own.Current || k == own.Next {
			t.Errorf("the farm's set holds the agent's own key %v, drawn before it joined", k)
		}
	}
}

// TestKeysHealthzHidesOnChangeOutput runs tlsfarm keys with an -on-change
// command that fails and prints a URL with a password and a path. The
// agent's /healthz, which needs no token (and the agent has none), says
// that the on-change export fails, but shows nothing of the output.
func TestKeysHealthzHidesOnChangeOutput(t *testing.T) {
	t.Parallel()
	secret, _, _, _ := farmFiles(t)
	a := startAgent(t, "keys", append(farmArgs(redistest.URL(t), secret, redistest.Farm(t)),
		"-export", "file:"+filepath.Join(privateDir(t), "keys.json"),
		"-on-change", "echo reload via https://deploy:hunter2@cdn.example/hook from /etc/secret/hook.sh; exit 3")...)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := a.exporter.Status()
		if last := st[len(st)-1]; last.Target == keyexport.OnChangeTarget && last.Failures > 0 {
			if !strings.Contains(last.Error, "exit status 3") {
				t.Fatalf("on-change error %q", last.Error)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the on-change command has not failed within 10s: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, body := nettest.Do(t, "GET", "http://"+a.adminAddr+"/healthz", "")
	if code != 200 || !strings.Contains(body, `"status": "degraded"`) || !strings.Contains(body, `"target": "on-change"`) {
		t.Fatalf("healthz: %d %s", code, body)
	}
	for _, leak := range []string{"hunter2", "cdn.example", "/etc/secret", "exit status"} {
		if strings.Contains(body, leak) {
			t.Errorf("healthz shows %q of the command's output: %s", leak, body)
		}
	}
}
