package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// getSession makes a full HTTP/3 handshake with n and waits for the ticket.
func getSession(t *testing.T, n *h3Node, cache *pinnedCache) h3Result {
	t.Helper()
	r := newH3Client(t, cache).do(t, n.addr, http.MethodGet, "/", false)
	if r.resumed || r.status != http.StatusOK {
		t.Fatalf("first connection: resumed %v, status %d", r.resumed, r.status)
	}
	cache.wait(t)
	return r
}

func TestHTTP3SessionResumesAcrossFarm(t *testing.T) {
	for _, mode := range []session.Mode{session.Stateful, session.Stateless} {
		t.Run(mode.String(), func(t *testing.T) {
			nodes := startH3Farm(t, h3FarmOptions{n: 3, mode: mode})
			cache := newPinnedCache()
			first := getSession(t, nodes[0], cache)
			if first.facts.Protocol != "quic" || first.facts.HTTPProtocol != "HTTP/3.0" || first.facts.Node != "n1" {
				t.Fatalf("facts of the first connection: %+v", first.facts)
			}
			for _, n := range nodes[1:] {
				r := newH3Client(t, cache).do(t, n.addr, http.MethodGet, "/", false)
				if !r.resumed || !r.facts.Resumed {
					t.Errorf("%s: the session from n1 did not resume over HTTP/3 (%+v)", n.s.node, r.facts)
				}
				eventually(t, n.s.node+" counts one resumed QUIC handshake", func() bool {
					return n.s.QUICStats().ResumedHandshakes == 1
				})
			}
			if got := nodes[0].s.QUICStats().FullHandshakes; got != 1 {
				t.Errorf("n1: %d full QUIC handshakes counted, want 1", got)
			}
		})
	}
}

// TestHTTP3SingleUseOnceInFarm: with single use, a session resumes over
// HTTP/3 once in the whole farm. A QUIC handshake has no net.Conn to report
// completion with; its claim is settled when the handshake ends.
func TestHTTP3SingleUseOnceInFarm(t *testing.T) {
	nodes := startH3Farm(t, h3FarmOptions{n: 3, mode: session.Stateful, singleUse: true})
	for _, n := range nodes {
		// A TCP handshake first: each node's cache then knows that its
		// server reports completed handshakes (HandshakeComplete), which
		// the QUIC ones must not wait for.
		c, err := tls.Dial("tcp", n.addr.String(), &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	cache := newPinnedCache()
	getSession(t, nodes[0], cache)
	resumed := 0
	for i, n := range []*h3Node{nodes[1], nodes[2], nodes[0], nodes[1]} {
		if i == 2 {
			// Past the 2 s in which a claim whose handshake has ended
			// waits for HandshakeComplete: a claim released then, not
			// consumed, would let the session resume again.
			time.Sleep(2500 * time.Millisecond)
		}
		if r := newH3Client(t, cache).do(t, n.addr, http.MethodGet, "/", false); r.resumed {
			resumed++
		}
	}
	if resumed != 1 {
		t.Fatalf("one single-use session resumed %d times over HTTP/3 in the farm, want once", resumed)
	}
}

func TestHTTP3AltSvcOnTCP(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) { c.Listeners[0].HTTP3 = true })
	resp, _, _ := get(t, s.Addrs()[0], client("localhost", cert), "/", nil)
	_, port, _ := strings.Cut(s.Addrs()[0], ":")
	if got, want := resp.Header.Get("Alt-Svc"), fmt.Sprintf(`h3=":%s"; ma=86400`, port); got != want {
		t.Fatalf("Alt-Svc = %q, want %q", got, want)
	}
	_, body, _ := get(t, s.Addrs()[0], client("localhost", cert), "/", http.Header{EarlyDataHeader: {"1"}})
	if !strings.Contains(string(body), `"early_data": false`) || !strings.Contains(string(body), `"protocol": "tcp"`) {
		t.Fatalf("a TCP request that claims Early-Data reached the upstream as early: %s", body)
	}
}

// TestHTTP3EarlyDataOnceInFarm: early data with a session from n1 is
// accepted once, on n2; the same session's 0-RTT flight to n3 has its early
// data refused (and resumes in 1-RTT); both flights replayed verbatim to
// the other node are refused as replays.
func TestHTTP3EarlyDataOnceInFarm(t *testing.T) {
	for _, mode := range []session.Mode{session.Stateful, session.Stateless} {
		t.Run(mode.String(), func(t *testing.T) {
			nodes := startH3Farm(t, h3FarmOptions{n: 3, mode: mode, earlyData: true})
			cache := newPinnedCache()
			getSession(t, nodes[0], cache)
			n2, n3 := nodes[1], nodes[2]

			to2 := newRelay(t, n2.addr, 0)
			r := newH3Client(t, cache).do(t, to2.addr(), http.MethodGet, "/", true)
			if !r.used0RTT || !r.resumed || r.status != http.StatusOK {
				t.Fatalf("n2: early data with n1's session: used 0-RTT %v, resumed %v, status %d", r.used0RTT, r.resumed, r.status)
			}

			to3 := newRelay(t, n3.addr, 0)
			r = newH3Client(t, cache).do(t, to3.addr(), http.MethodGet, "/", true)
			if r.used0RTT {
				t.Fatal("n3 accepted early data with a session already used for early data on n2")
			}
			if !r.resumed || r.status != http.StatusOK || r.facts.EarlyData {
				t.Fatalf("n3: the handshake after refused early data: resumed %v, status %d, facts %+v", r.resumed, r.status, r.facts)
			}
			if got := n3.s.QUICStats().EarlyDataRejected["replay"]; got != 1 {
				t.Errorf("n3: %d early data refusals for replay, want 1", got)
			}

			// An attacker replays each flight, byte for byte, to the other node.
			before2 := n2.s.QUICStats()
			to3.replay(n2.addr)
			to2.replay(n3.addr)
			defer func() {
				if t.Failed() {
					t.Logf("n2 %+v\nn3 %+v", n2.s.QUICStats(), n3.s.QUICStats())
				}
			}()
			eventually(t, "both replays are refused", func() bool {
				return n2.s.QUICStats().EarlyDataRejected["replay"] == before2.EarlyDataRejected["replay"]+1 &&
					n3.s.QUICStats().EarlyDataRejected["replay"] == 2
			})
			accepted := func() (total uint64) {
				for _, n := range nodes {
					total += n.s.QUICStats().EarlyDataAccepted
				}
				return total
			}
			eventually(t, "the accepted early data is counted", func() bool { return accepted() >= 1 })
			if got := accepted(); got != 1 {
				t.Fatalf("early data accepted %d times in the farm, want 1", got)
			}
		})
	}
}

// TestHTTP3EarlyDataConcurrentExactlyOnce: K clients present one session's
// early data at once, spread over three nodes; exactly one is accepted and
// every handshake completes, resumed.
func TestHTTP3EarlyDataConcurrentExactlyOnce(t *testing.T) {
	const K = 9
	nodes := startH3Farm(t, h3FarmOptions{n: 3, mode: session.Stateless, earlyData: true})
	cache := newPinnedCache()
	getSession(t, nodes[0], cache)
	var accepted, resumed atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range K {
		c := newH3Client(t, cache)
		// Through a relay, which lets each client send its whole first
		// flight before the server answers: quic-go's client has a data
		// race between opening a 0-RTT stream and taking in the server's
		// transport parameters, which the race detector can catch when
		// the answer comes back at once under load.
		rl := newRelay(t, nodes[i%3].addr, 0)
		wg.Go(func() {
			<-start
			r := c.do(t, rl.addr(), http.MethodGet, "/", true)
			if r.used0RTT {
				accepted.Add(1)
			}
			if r.resumed && r.status == http.StatusOK {
				resumed.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	if accepted.Load() != 1 || resumed.Load() != K {
		t.Fatalf("%d concurrent 0-RTT attempts with one session: %d accepted (want 1), %d resumed (want %d)",
			K, accepted.Load(), resumed.Load(), K)
	}
	var replays uint64
	for _, n := range nodes {
		replays += n.s.QUICStats().EarlyDataRejected["replay"]
	}
	if replays != K-1 {
		for _, n := range nodes {
			t.Logf("%s: %+v", n.s.node, n.s.QUICStats())
		}
		t.Fatalf("%d refusals for replay, want %d", replays, K-1)
	}
}

// TestHTTP3EarlyDataStoreDown: with the farm's store gone, early data is
// refused and counted, and the connection still resumes and is served.
func TestHTTP3EarlyDataStoreDown(t *testing.T) {
	rs := redistest.Start(t)
	nodes := startH3Farm(t, h3FarmOptions{n: 1, mode: session.Stateful, earlyData: true, redisURL: rs.URL()})
	cache := newPinnedCache()
	getSession(t, nodes[0], cache)
	rs.Kill()
	r := newH3Client(t, cache).do(t, newRelay(t, nodes[0].addr, 0).addr(), http.MethodGet, "/", true)
	if r.used0RTT {
		t.Fatal("early data accepted with the store down")
	}
	if !r.resumed || r.status != http.StatusOK {
		t.Fatalf("with the store down: resumed %v, status %d", r.resumed, r.status)
	}
	st := nodes[0].s.QUICStats()
	if st.EarlyDataRejected["store_unavailable"] != 1 || st.EarlyDataOffered != 1 {
		t.Fatalf("counters: %+v", st)
	}
}

// TestHTTP3EarlyRequests: a GET in early data reaches the upstream marked
// Early-Data: 1; a POST in early data gets 425 without reaching it; the
// upstream's own 425 reaches the client. The relay holds back the client's
// handshake completion so that the requests are served while still early.
func TestHTTP3EarlyRequests(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path+" early="+r.Header.Get(EarlyDataHeader))
		mu.Unlock()
		if r.URL.Path == "/strict" && r.Header.Get(EarlyDataHeader) == "1" {
			w.WriteHeader(http.StatusTooEarly)
			return
		}
		fmt.Fprint(w, "ok")
	}))
	t.Cleanup(up.Close)
	nodes := startH3Farm(t, h3FarmOptions{n: 1, mode: session.Stateful, earlyData: true, upstream: up.URL})
	n := nodes[0]

	cases := []struct {
		method, path string
		status       int
		upstream     string // what the upstream saw; "" for nothing
	}{
		{http.MethodGet, "/get", http.StatusOK, "GET /get early=1"},
		{http.MethodPost, "/post", http.StatusTooEarly, ""},
		{http.MethodGet, "/strict", http.StatusTooEarly, "GET /strict early=1"},
	}
	for _, tc := range cases {
		t.Run(tc.method+tc.path, func(t *testing.T) {
			cache := newPinnedCache()
			getSession(t, n, cache)
			mu.Lock()
			seen = nil
			mu.Unlock()
			before := n.s.QUICStats().TooEarly
			rl := newRelay(t, n.addr, time.Second)
			r := newH3Client(t, cache).do(t, rl.addr(), tc.method, tc.path, true)
			if !r.used0RTT {
				t.Fatal("early data was not accepted")
			}
			if r.status != tc.status {
				t.Fatalf("status %d, want %d (%s)", r.status, tc.status, r.body)
			}
			mu.Lock()
			got := strings.Join(seen, ",")
			mu.Unlock()
			if got != tc.upstream {
				t.Fatalf("upstream saw %q, want %q", got, tc.upstream)
			}
			if tc.status == http.StatusTooEarly && n.s.QUICStats().TooEarly != before+1 {
				t.Fatalf("425s counted: %d, want %d", n.s.QUICStats().TooEarly, before+1)
			}
		})
	}
	// After the handshake, the same POST is served, not early.
	cache := newPinnedCache()
	getSession(t, n, cache)
	r := newH3Client(t, cache).do(t, n.addr, http.MethodPost, "/late", false)
	if r.status != http.StatusOK {
		t.Fatalf("POST after the handshake: status %d", r.status)
	}
}

// TestHTTP3BuiltinFactsEarlyData: the built-in upstream reports early data.
func TestHTTP3BuiltinFactsEarlyData(t *testing.T) {
	nodes := startH3Farm(t, h3FarmOptions{n: 1, mode: session.Stateful, earlyData: true})
	cache := newPinnedCache()
	getSession(t, nodes[0], cache)
	rl := newRelay(t, nodes[0].addr, time.Second)
	r := newH3Client(t, cache).do(t, rl.addr(), http.MethodGet, "/", true)
	if !r.used0RTT || !r.facts.EarlyData || r.facts.Protocol != "quic" || !r.facts.Resumed {
		t.Fatalf("facts of an early request: %+v (used 0-RTT %v)", r.facts, r.used0RTT)
	}
	eventually(t, "the accepted early data is counted", func() bool {
		st := nodes[0].s.QUICStats()
		return st.EarlyDataAccepted == 1 && st.EarlyRequests == 1 && st.EarlyDataOffered == 1
	})
}

// TestHTTP3EarlyDataDisabled: a listener without early data refuses it,
// counted as disabled, and still resumes.
func TestHTTP3EarlyDataDisabled(t *testing.T) {
	nodes := startH3Farm(t, h3FarmOptions{n: 2, mode: session.Stateless, earlyData: true, earlyOff: 2})
	cache := newPinnedCache()
	getSession(t, nodes[0], cache)
	off := nodes[1]
	r := newH3Client(t, cache).do(t, newRelay(t, off.addr, 0).addr(), http.MethodGet, "/", true)
	if r.used0RTT || !r.resumed {
		t.Fatalf("early data off: used 0-RTT %v, resumed %v", r.used0RTT, r.resumed)
	}
	if got := off.s.QUICStats().EarlyDataRejected["disabled"]; got != 1 {
		t.Fatalf("%d refusals counted as disabled, want 1", got)
	}
}

// TestHTTP3TokenFromOneNodeSkipsRetry: with address validation required, a
// NEW_TOKEN from n1 lets the client skip the Retry on n2, because both
// derive the token key from the farm secret; a server with another key
// makes the client do a Retry.
func TestHTTP3TokenFromOneNodeSkipsRetry(t *testing.T) {
	nodes := startH3Farm(t, h3FarmOptions{n: 2, mode: session.Stateful, validate: true})
	other := startH3Farm(t, h3FarmOptions{n: 1, mode: session.Stateful, validate: true})[0]
	c := newH3Client(t, tls.NewLRUClientSessionCache(4))

	via := newRelay(t, nodes[0].addr, 0)
	c.do(t, via.addr(), http.MethodGet, "/", false)
	if via.retries.Load() == 0 {
		t.Fatal("n1, first contact: no Retry")
	}
	// The NEW_TOKEN frame follows the handshake; wait until the client has it.
	eventually(t, "the client holds a token", func() bool {
		tok := c.tokens.Pop("localhost")
		if tok != nil {
			c.tokens.Put("localhost", tok)
		}
		return tok != nil
	})
	via = newRelay(t, nodes[1].addr, 0)
	c.do(t, via.addr(), http.MethodGet, "/", false)
	if via.retries.Load() != 0 {
		t.Fatalf("n2 with n1's token: %d Retry packets, want 0", via.retries.Load())
	}

	c2 := newH3Client(t, tls.NewLRUClientSessionCache(4))
	c2.do(t, nodes[0].addr, http.MethodGet, "/", false)
	eventually(t, "the client holds a token", func() bool {
		tok := c2.tokens.Pop("localhost")
		if tok != nil {
			c2.tokens.Put("localhost", tok)
		}
		return tok != nil
	})
	via = newRelay(t, other.addr, 0)
	c2.do(t, via.addr(), http.MethodGet, "/", false)
	if via.retries.Load() == 0 {
		t.Fatal("a server with another token key accepted the token: no Retry")
	}
}

// TestHTTP3StatelessResetAcrossFarm: when the balancer sends a client's
// packets to another node, that node's stateless reset ends the connection
// at once, because the reset key is the farm's.
func TestHTTP3StatelessResetAcrossFarm(t *testing.T) {
	nodes := startH3Farm(t, h3FarmOptions{n: 2, mode: session.Stateful})
	rl := newRelay(t, nodes[0].addr, 0)
	c := newH3Client(t, tls.NewLRUClientSessionCache(4))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.tr.Dial(ctx, rl.addr(), c.tls, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	cc := (&http3.Transport{}).NewClientConn(conn)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://localhost/", nil)
	resp, err := cc.RoundTrip(req) // the handshake is confirmed
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	rl.target.Store(nodes[1].addr) // the balancer now sends this client elsewhere
	req, _ = http.NewRequestWithContext(ctx, http.MethodPost, "https://localhost/", strings.NewReader(strings.Repeat("x", 1000)))
	go cc.RoundTrip(req)
	select {
	case <-conn.Context().Done():
		var reset *quic.StatelessResetError
		if err := context.Cause(conn.Context()); !errors.As(err, &reset) {
			t.Fatalf("connection ended by %v, want a stateless reset", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the connection was not reset")
	}
}

// TestHTTP3EarlyDataTooOld: a session older than the early data window
// carries no early data (and strikes nothing), but resumes.
func TestHTTP3EarlyDataTooOld(t *testing.T) {
	nodes := startH3Farm(t, h3FarmOptions{n: 1, mode: session.Stateful, earlyData: true, window: time.Nanosecond})
	cache := newPinnedCache()
	getSession(t, nodes[0], cache)
	r := newH3Client(t, cache).do(t, newRelay(t, nodes[0].addr, 0).addr(), http.MethodGet, "/", true)
	if r.used0RTT || !r.resumed || r.status != http.StatusOK {
		t.Fatalf("a session older than the window: used 0-RTT %v, resumed %v, status %d", r.used0RTT, r.resumed, r.status)
	}
	if st := nodes[0].s.QUICStats(); st.EarlyDataRejected["too_old"] != 1 || st.EarlyDataRejected["replay"] != 0 {
		t.Fatalf("counters: %+v", st)
	}
}
