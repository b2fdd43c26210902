package proxy

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
)

func TestBuiltinAnswersWithFactsAndResumes(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, nil)
	addr := s.Addrs()[0]
	cfg := client("localhost", cert)

	f := getFacts(t, addr, cfg)
	must(t, f.Node == "test-node" && f.TLSVersion == "TLS 1.3" && !f.Resumed && f.ServerName == "localhost" &&
		f.ALPN == "http/1.1" && f.CipherSuite != "" && strings.HasPrefix(f.ClientAddress, "127.0.0.1:"), "first facts: %+v", f)
	must(t, f.SessionID == "", "session ID exposed without the debug option")

	f = getFacts(t, addr, cfg)
	must(t, f.Resumed, "second connection did not resume: %+v", f)
	must(t, handshakes(s, tls.VersionTLS13, false) == 1 && handshakes(s, tls.VersionTLS13, true) == 1, "stats %+v", s.Stats())

	// TLS 1.2 resumes too, by ticket.
	cfg12 := client("localhost", cert)
	cfg12.MaxVersion = tls.VersionTLS12
	getFacts(t, addr, cfg12)
	f = getFacts(t, addr, cfg12)
	must(t, f.Resumed && f.TLSVersion == "TLS 1.2", "TLS 1.2: %+v", f)
}

func TestHTTP2WhenNegotiated(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) { c.Listeners[0].NextProtos = []string{"h2", "http/1.1"} })
	cfg := client("localhost", cert)
	cfg.NextProtos = []string{"h2"}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("https://" + s.Addrs()[0] + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var f Facts
	json.NewDecoder(resp.Body).Decode(&f)
	must(t, f.HTTPProtocol == "HTTP/2.0" && f.ALPN == "h2", "facts %+v", f)
}

func TestCertificateByServerName(t *testing.T) {
	a := mustSelfSigned(t, "a.example")
	b := mustSelfSigned(t, "b.example", "*.b.example")
	s, _ := start(t, a, func(c *Config) {
		c.Listeners[0].Certificates = append(c.Listeners[0].Certificates, Certificate{Certificate: b})
	})
	for _, tt := range []struct {
		name string
		want *tls.Certificate
	}{{"a.example", a}, {"b.example", b}, {"x.b.example", b}, {"B.Example", b}, {"other.example", a}, {"", a}} {
		cfg := &tls.Config{ServerName: tt.name, InsecureSkipVerify: true}
		c, err := tls.Dial("tcp", s.Addrs()[0], cfg)
		if err != nil {
			t.Fatal(err)
		}
		got := c.ConnectionState().PeerCertificates[0]
		c.Close()
		must(t, bytes.Equal(got.Raw, tt.want.Leaf.Raw), "server name %q: served %v", tt.name, got.DNSNames)
	}
}

func TestReverseProxySetsForwardedAndResumedHeaders(t *testing.T) {
	type seen struct{ xff, proto, resumed, host string }
	var mu sync.Mutex
	var got []seen
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, seen{r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"), r.Header.Get(ResumedHeader), r.Host})
		mu.Unlock()
		io.WriteString(w, "upstream")
	}))
	defer up.Close()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) { c.Listeners[0].Upstream = up.URL })
	cfg := client("localhost", cert)
	spoof := http.Header{ResumedHeader: {"1"}, "X-Forwarded-For": {"6.6.6.6"}}
	_, body, _ := get(t, s.Addrs()[0], cfg, "/x", spoof)
	must(t, string(body) == "upstream", "body %q", body)
	get(t, s.Addrs()[0], cfg, "/x", nil)
	mu.Lock()
	defer mu.Unlock()
	must(t, len(got) == 2, "upstream saw %d requests", len(got))
	must(t, got[0] == seen{"127.0.0.1", "https", "0", "localhost"}, "first request: %+v", got[0])
	must(t, got[1] == seen{"127.0.0.1", "https", "1", "localhost"}, "second request: %+v", got[1])
	must(t, s.Stats().UpstreamHTTPRequests == 2, "stats %+v", s.Stats())
}

func TestReverseProxyCountsUpstreamErrors(t *testing.T) {
	dead := "http://" + nettest.Refused(t) // held: no other test's server takes the port
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) { c.Listeners[0].Upstream = dead })
	resp, _, _ := get(t, s.Addrs()[0], client("localhost", cert), "/", nil)
	must(t, resp.StatusCode == http.StatusBadGateway, "status %d", resp.StatusCode)
	must(t, s.Stats().UpstreamErrors == 1, "stats %+v", s.Stats())
}

func TestTCPPassthroughEchoesWithHalfClose(t *testing.T) {
	echo := nettest.Echo(t)
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = "tcp://" + echo
		c.Listeners[0].NextProtos = nil
	})
	c, err := tls.Dial("tcp", s.Addrs()[0], client("localhost", cert))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := strings.Repeat("echo ", 20000)
	go func() {
		io.WriteString(c, msg)
		c.CloseWrite()
	}()
	back, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	must(t, string(back) == msg, "echoed %d bytes of %d", len(back), len(msg))
}

func TestTCPPassthroughIdleTimeout(t *testing.T) {
	silent := nettest.Silent(t)
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = "tcp://" + silent
		c.IdleTimeout = 300 * time.Millisecond
	})
	c, err := tls.Dial("tcp", s.Addrs()[0], client("localhost", cert))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	t0 := time.Now()
	_, err = c.Read(make([]byte, 1))
	took := time.Since(t0)
	must(t, err != nil && took >= 250*time.Millisecond && took < 3*time.Second, "read ended after %v with %v", took, err)
}

func TestReloadSwapsCertificateKeepsSessions(t *testing.T) {
	old := mustSelfSigned(t, "localhost")
	s, _ := start(t, old, nil)
	addr := s.Addrs()[0]
	neu := mustSelfSigned(t, "localhost")
	cfg := client("localhost", old, neu)
	getFacts(t, addr, cfg)

	err := s.Reload(Config{
		Node:      "test-node",
		Listeners: []Listener{{Address: "ignored", Certificates: []Certificate{{Certificate: neu}}, NextProtos: []string{"http/1.1"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	f := getFacts(t, addr, cfg)
	must(t, f.Resumed, "the session issued before the reload did not resume: %+v", f)
	fresh := client("localhost", neu)
	_, _, cs := get(t, addr, fresh, "/", nil)
	must(t, bytes.Equal(cs.PeerCertificates[0].Raw, neu.Leaf.Raw), "new clients still get the old certificate")
}

func TestReloadRejectsInvalidConfigAndKeepsTheOld(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, nil)
	for _, bad := range []Config{
		{Listeners: []Listener{{Certificates: []Certificate{{Certificate: cert}}, Upstream: "ftp://x"}}},
		{Listeners: []Listener{{}}},
		{Listeners: []Listener{{Certificates: []Certificate{{Certificate: cert}}}, {Certificates: []Certificate{{Certificate: cert}}}}},
	} {
		if err := s.Reload(bad); err == nil {
			t.Errorf("Reload(%+v) succeeded", bad)
		}
	}
	f := getFacts(t, s.Addrs()[0], client("localhost", cert))
	must(t, f.Node == "test-node", "facts after a rejected reload: %+v", f)
}

// TestReloadErrorHidesUpstreamPassword: a reload refused for its upstream
// says why without the password the upstream URL holds.
func TestReloadErrorHidesUpstreamPassword(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, nil)
	for _, up := range []string{"ftp://u:hunter2@x", "http://u:hunter2@", "http://u:hunter2@x/%zz", "tcp://u:hunter2@x"} {
		err := s.Reload(Config{Listeners: []Listener{{Certificates: []Certificate{{Certificate: cert}}, Upstream: up}}})
		if err == nil {
			t.Errorf("Reload with upstream %s succeeded", up)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("upstream %s: the error shows the password: %v", up, err)
		}
	}
}

func TestStalledHandshakeIsCut(t *testing.T) {
	s, _ := start(t, nil, func(c *Config) { c.HandshakeTimeout = 300 * time.Millisecond })
	c, err := net.Dial("tcp", s.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0x16, 0x03, 0x01, 0x01, 0x00}) // a record header, then nothing
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	t0 := time.Now()
	_, err = io.ReadAll(c)
	took := time.Since(t0)
	must(t, err == nil && took >= 250*time.Millisecond && took < 3*time.Second, "server closed after %v (err %v)", took, err)
	waitFor(t, func() bool { return s.Stats().HandshakeTimeouts == 1 }, "handshake timeout counted: %+v", s.Stats())
}

func TestProxyProtocolGivesClientAddress(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].ProxyProtocol = true
		c.Listeners[0].ProxyTrusted = []string{"127.0.0.0/8"}
	})
	raw, err := net.Dial("tcp", s.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 4242}, raw.RemoteAddr())
	if _, err := h.WriteTo(raw); err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, client("localhost", cert))
	_, body, _ := roundTrip(t, c, "/", nil)
	var f Facts
	json.Unmarshal(body, &f)
	must(t, f.ClientAddress == "203.0.113.7:4242", "client address %q", f.ClientAddress)

	// Without a header, the connection is refused and counted.
	if _, err := tls.Dial("tcp", s.Addrs()[0], client("localhost", cert)); err == nil {
		t.Error("handshake without a PROXY header succeeded")
	}
	waitFor(t, func() bool { return s.Stats().ProxyHeaderFailures == 1 }, "failure not counted: %+v", s.Stats())
}

func TestMaxConnections(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) { c.MaxConnections = 1 })
	first, err := tls.Dial("tcp", s.Addrs()[0], client("localhost", cert))
	if err != nil {
		t.Fatal(err)
	}
	// The second connection waits in the kernel's backlog, unanswered.
	second, err := net.Dial("tcp", s.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	done := make(chan error, 1)
	go func() {
		c := tls.Client(second, client("localhost", cert))
		c.SetDeadline(time.Now().Add(5 * time.Second))
		done <- c.Handshake()
	}()
	select {
	case err := <-done:
		t.Fatalf("second handshake finished (%v) while the first connection was open", err)
	case <-time.After(300 * time.Millisecond):
	}
	first.Close()
	if err := <-done; err != nil {
		t.Fatalf("second handshake after the first closed: %v", err)
	}
}

func TestExposeSessionIDAndRevoke(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			cert := mustSelfSigned(t, "localhost")
			s, cache := start(t, cert, func(c *Config) { c.ExposeSessionID = true })
			cfg := client("localhost", cert)
			cfg.MaxVersion = v
			f := getFacts(t, s.Addrs()[0], cfg)
			id, err := session.ParseID(f.SessionID)
			if err != nil {
				t.Fatalf("session ID %q: %v", f.SessionID, err)
			}
			// A resumption issues a successor (TLS 1.3) or keeps the
			// session under a reissued ticket (TLS 1.2): the facts name
			// the session the client now holds.
			f = getFacts(t, s.Addrs()[0], cfg)
			must(t, f.Resumed, "did not resume")
			if (f.SessionID == id.String()) != (v == tls.VersionTLS12) {
				t.Fatalf("after resuming over %s the facts name %s, first %s", tls.VersionName(v), f.SessionID, id)
			}
			if id, err = session.ParseID(f.SessionID); err != nil {
				t.Fatalf("session ID %q: %v", f.SessionID, err)
			}
			_, found := cache.Remove(id)
			must(t, found, "the exposed ID is not in the cache")
			f = getFacts(t, s.Addrs()[0], cfg)
			must(t, !f.Resumed, "a revoked session resumed")
		})
	}
}

func TestShutdownDrainsThenCloses(t *testing.T) {
	hold := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-hold
		io.WriteString(w, "done")
	}))
	defer up.Close()
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) { c.Listeners[0].Upstream = up.URL })
	result := make(chan string, 1)
	go func() {
		c, err := tls.Dial("tcp", s.Addrs()[0], client("localhost", cert))
		if err != nil {
			result <- err.Error()
			return
		}
		_, body, _ := roundTrip(t, c, "/", nil)
		result <- string(body)
	}()
	waitFor(t, func() bool { return s.Stats().UpstreamHTTPRequests == 1 }, "request did not reach the upstream")
	shut := shutdownInBackground(t, s)
	if _, err := net.DialTimeout("tcp", s.Addrs()[0], time.Second); err == nil {
		t.Error("listener still accepts during shutdown")
	}
	close(hold)
	must(t, <-result == "done", "the request in flight did not finish")
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool, format string, args ...any) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf(format, args...)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStatelessTicketsSurviveReload checks that the configs a reload makes
// take their ticket keys from the ring: a stateless ticket issued before a
// reload resumes after it.
func TestStatelessTicketsSurviveReload(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	var cache *session.Cache
	s, _ := start(t, cert, func(c *Config) {
		var err error
		if cache, err = session.New(&session.Config{Mode: session.Stateless}); err != nil {
			t.Fatal(err)
		}
		c.Cache = cache
	})
	defer cache.Close()
	cfg := client("localhost", cert)
	getFacts(t, s.Addrs()[0], cfg)
	tickets := func(event string) float64 {
		v, _ := metric.Value(cache.Metrics(), "tlsfarm_cache_tickets_total", "event", event)
		return v
	}
	must(t, tickets("issued") == 1, "no stateless ticket issued: %v", cache.Metrics())
	err := s.Reload(Config{Node: "test-node", Listeners: []Listener{{Certificates: []Certificate{{Certificate: cert}}, NextProtos: []string{"http/1.1"}}}})
	if err != nil {
		t.Fatal(err)
	}
	f := getFacts(t, s.Addrs()[0], cfg)
	must(t, f.Resumed && tickets("accepted") == 1, "stateless ticket after reload: %+v %v", f, cache.Metrics())
}
