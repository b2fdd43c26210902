package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/quic-go/quic-go/http3"
	"github.com/tlsfarm/tlsfarm/metric"
	"github.com/tlsfarm/tlsfarm/session"
)

// earlySeen is an upstream that records, by path, the Early-Data fields of
// the requests it gets ("-" for none).
type earlySeen struct {
	*httptest.Server
	mu   sync.Mutex
	seen map[string]string
}

func newEarlySeen(t *testing.T) *earlySeen {
	u := &earlySeen{seen: map[string]string{}}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := "-"
		if v, ok := r.Header[EarlyDataHeader]; ok {
			got = strings.Join(v, "|")
		}
		for k := range r.Header {
			if strings.EqualFold(strings.ReplaceAll(k, "_", "-"), EarlyDataHeader) && k != EarlyDataHeader {
				got += " +" + k
			}
		}
		u.mu.Lock()
		u.seen[r.URL.Path] = got
		u.mu.Unlock()
		io.WriteString(w, "ok")
	}))
	t.Cleanup(u.Close)
	return u
}

// got returns what the upstream saw for path, "" if no request came.
func (u *earlySeen) got(path string) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen[path]
}

// dialFrom opens a TLS connection to addr whose PROXY v2 header gives src
// (an IP address) as the client's address; with src "", it sends none.
func dialFrom(t *testing.T, addr, src string, cfg *tls.Config) *tls.Conn {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if src != "" {
		h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP(src), Port: 40000}, raw.RemoteAddr())
		if _, err := h.WriteTo(raw); err != nil {
			t.Fatal(err)
		}
	}
	c := tls.Client(raw, cfg)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	return c
}

// rawGet sends a GET for path over HTTP/1.1 on c with the header lines
// given as they go on the wire, and returns the status.
func rawGet(t *testing.T, c *tls.Conn, path string, lines []string) int {
	t.Helper()
	defer c.Close()
	req := "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n"
	for _, l := range lines {
		req += l + "\r\n"
	}
	req += "\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// h2From returns an HTTP/2 client whose connections to the server come
// with a PROXY header giving src.
func h2From(t *testing.T, src string, cfg *tls.Config) *http.Client {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"}
	tr := &http.Transport{
		ForceAttemptHTTP2: true,
		DialTLSContext: func(_ context.Context, _, addr string) (net.Conn, error) {
			c := dialFrom(t, addr, src, cfg)
			if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
				return nil, fmt.Errorf("negotiated %q, not h2", p)
			}
			c.SetDeadline(time.Time{})
			return c, nil
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// earlyFieldCases are the Early-Data fields a request arrives with, on the
// wire (HTTP/1.1 lines), and what a trusted intermediary's request takes
// upstream. Every kept field goes as one "1" (RFC 8470 §5.1); the
// underscore spelling is never taken for it, and is dropped.
var earlyFieldCases = []struct {
	name    string
	lines   []string
	trusted string // what the upstream sees from a trusted intermediary
}{
	{"one", []string{"Early-Data: 1"}, "1"},
	{"none", nil, "-"},
	{"zero", []string{"Early-Data: 0"}, "1"},
	{"empty", []string{"Early-Data:"}, "1"},
	{"junk", []string{"Early-Data: yes please"}, "1"},
	{"lower case", []string{"early-data: 1"}, "1"},
	{"twice", []string{"Early-Data: 1", "Early-Data: 1"}, "1"},
	{"twice differing", []string{"Early-Data: 0", "Early-Data: 1"}, "1"},
	{"list", []string{"Early-Data: 1, 1"}, "1"},
	{"hop-by-hop", []string{"Connection: Early-Data", "Early-Data: 1"}, "1"},
	{"underscore", []string{"Early_Data: 1"}, "-"},
}

// TestEarlyDataKeptFromTrustedIntermediary: behind a balancer that sends
// PROXY headers, a request whose PROXY header gives an address in
// EarlyDataTrusted (a CDN's) keeps its Early-Data field, sent upstream as
// one "Early-Data: 1" over HTTP/1.1 and HTTP/2; one from any other client
// address loses it, even when the balancer itself (the connection's peer)
// is listed.
func TestEarlyDataKeptFromTrustedIntermediary(t *testing.T) {
	up := newEarlySeen(t)
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		l := &c.Listeners[0]
		l.Upstream = up.URL
		l.NextProtos = []string{"h2", "http/1.1"}
		l.ProxyProtocol = true
		l.ProxyTrusted = []string{"127.0.0.0/8"}
		l.EarlyDataTrusted = []string{"203.0.113.0/24", "2001:db8::/32", "127.0.0.1"}
	})
	addr := s.Addrs()[0]
	cfg := client("localhost", cert)
	senders := []struct {
		name, src string
		trusted   bool
	}{
		{"cdn", "203.0.113.7", true},
		{"cdn6", "2001:db8::7", true},
		{"mapped", "::ffff:203.0.113.8", true},
		{"client", "198.51.100.9", false},
		{"client6", "2001:db9::1", false},
	}
	for _, from := range senders {
		for _, tc := range earlyFieldCases {
			path := "/h1/" + from.name + "/" + strings.ReplaceAll(tc.name, " ", "-")
			if st := rawGet(t, dialFrom(t, addr, from.src, cfg), path, tc.lines); st != http.StatusOK {
				t.Fatalf("%s: status %d", path, st)
			}
			want := "-"
			if from.trusted {
				want = tc.trusted
			}
			if got := up.got(path); got != want {
				t.Errorf("HTTP/1.1 from %s (%s), Early-Data fields %q: upstream saw %q, want %q", from.name, from.src, tc.lines, got, want)
			}
		}

		// HTTP/2: the fields as a client library sends them.
		hc := h2From(t, from.src, cfg)
		for _, tc := range []struct {
			name    string
			values  []string
			trusted string
		}{
			{"one", []string{"1"}, "1"},
			{"none", nil, "-"},
			{"zero", []string{"0"}, "1"},
			{"twice", []string{"1", "1"}, "1"},
			{"twice differing", []string{"1", "0"}, "1"},
		} {
			path := "/h2/" + from.name + "/" + strings.ReplaceAll(tc.name, " ", "-")
			req, _ := http.NewRequest(http.MethodPost, "https://"+addr+path, strings.NewReader("body"))
			req.Host = "localhost"
			if tc.values != nil {
				req.Header[EarlyDataHeader] = tc.values
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
				t.Fatalf("%s: %s %d", path, resp.Proto, resp.StatusCode)
			}
			want := "-"
			if from.trusted {
				want = tc.trusted
			}
			if got := up.got(path); got != want {
				t.Errorf("HTTP/2 POST from %s (%s), Early-Data %q: upstream saw %q, want %q", from.name, from.src, tc.values, got, want)
			}
		}
	}
}

// TestEarlyDataJudgesPeerWithoutProxyProtocol: without PROXY protocol the
// connection's peer is the address judged; and the built-in upstream
// reports a kept field as early data.
func TestEarlyDataJudgesPeerWithoutProxyProtocol(t *testing.T) {
	for _, tc := range []struct {
		trusted []string
		want    string
	}{
		{[]string{"127.0.0.1"}, "1"},
		{[]string{"10.0.0.0/8", "127.0.0.0/8"}, "1"},
		{[]string{"::1"}, "-"},
		{[]string{"10.0.0.0/8"}, "-"},
		{nil, "-"},
	} {
		up := newEarlySeen(t)
		cert := mustSelfSigned(t, "localhost")
		s, _ := start(t, cert, func(c *Config) {
			c.Listeners[0].Upstream = up.URL
			c.Listeners[0].EarlyDataTrusted = tc.trusted
		})
		rawGet(t, dialFrom(t, s.Addrs()[0], "", client("localhost", cert)), "/x", []string{"Early-Data: 1", "Early-Data: 1"})
		rawGet(t, dialFrom(t, s.Addrs()[0], "", client("localhost", cert)), "/y", nil)
		if got := up.got("/x"); got != tc.want {
			t.Errorf("trusted %q: upstream saw %q from 127.0.0.1, want %q", tc.trusted, got, tc.want)
		}
		// One request had the field, one had none: counted once, as
		// what was done with it.
		kept, removed := 0.0, 1.0
		if tc.want == "1" {
			kept, removed = 1, 0
		}
		for result, want := range map[string]float64{"kept": kept, "removed": removed} {
			if got, _ := metric.Value(s.Metrics(), "tlsfarm_early_data_fields_total", "result", result); got != want {
				t.Errorf("trusted %q: tlsfarm_early_data_fields_total{result=%q} = %v, want %v", tc.trusted, result, got, want)
			}
		}
	}

	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) { c.Listeners[0].EarlyDataTrusted = []string{"127.0.0.1"} })
	_, body, _ := get(t, s.Addrs()[0], client("localhost", cert), "/", http.Header{EarlyDataHeader: {"0"}})
	if !strings.Contains(string(body), `"early_data": true`) {
		t.Fatalf("the built-in upstream did not see a trusted intermediary's Early-Data: %s", body)
	}
}

// TestEarlyDataTrustReloads: Reload changes EarlyDataTrusted for the next
// requests, on a connection already open too.
func TestEarlyDataTrustReloads(t *testing.T) {
	up := newEarlySeen(t)
	cert := mustSelfSigned(t, "localhost")
	s, _ := start(t, cert, func(c *Config) {
		c.Listeners[0].Upstream = up.URL
		c.Listeners[0].NextProtos = []string{"h2"}
	})
	hc := h2From(t, "", client("localhost", cert))
	send := func(path string) string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "https://"+s.Addrs()[0]+path, nil)
		req.Header.Set(EarlyDataHeader, "1")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return up.got(path)
	}
	reload := func(trusted ...string) {
		t.Helper()
		err := s.Reload(Config{Node: "test-node", Listeners: []Listener{{
			Certificates: []Certificate{{Certificate: cert}}, NextProtos: []string{"h2"}, Upstream: up.URL, EarlyDataTrusted: trusted,
		}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := send("/before"); got != "-" {
		t.Fatalf("before the reload, with nobody trusted: upstream saw %q", got)
	}
	reload("127.0.0.1")
	if got := send("/trusted"); got != "1" {
		t.Fatalf("after a reload that trusts 127.0.0.1: upstream saw %q", got)
	}
	reload()
	if got := send("/untrusted"); got != "-" {
		t.Fatalf("after a reload that trusts nobody: upstream saw %q", got)
	}
	if err := s.Reload(Config{Listeners: []Listener{{Certificates: []Certificate{{Certificate: cert}}, Upstream: up.URL, EarlyDataTrusted: []string{"127.0.0.1", "cdn.example"}}}}); err == nil || !strings.Contains(err.Error(), "cdn.example") {
		t.Fatalf("Reload with a host name in EarlyDataTrusted: %v", err)
	}
	if got := send("/kept"); got != "-" {
		t.Fatalf("a refused reload changed the trust: upstream saw %q", got)
	}
}

// TestEarlyDataTrustedBadAddress: New refuses what is not an address or a
// CIDR range, naming it.
func TestEarlyDataTrustedBadAddress(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	cache, err := session.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	for _, bad := range []string{"cdn.example", "10.0.0.0/33", "fe80::1%eth0", ""} {
		_, err := New(Config{Cache: cache, Listeners: []Listener{{Address: "127.0.0.1:0", Certificates: []Certificate{{Certificate: cert}}, EarlyDataTrusted: []string{bad}}}})
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) {
			t.Errorf("New with EarlyDataTrusted %q: %v", bad, err)
		}
	}
}

// TestHTTP3EarlyDataFromTrustedIntermediary: over HTTP/3, once the
// handshake has completed, a trusted intermediary's Early-Data is kept as
// one "1", and its POST reaches the upstream (the upstream decides on
// 425); an untrusted client's is removed.
func TestHTTP3EarlyDataFromTrustedIntermediary(t *testing.T) {
	for _, tc := range []struct {
		trusted []string
		want    string
	}{
		{[]string{"127.0.0.0/8"}, "1"},
		{[]string{"10.0.0.0/8"}, "-"},
	} {
		up := newEarlySeen(t)
		cert := sharedH3Cert(t)
		s, _ := start(t, cert, func(c *Config) {
			c.Listeners[0].Upstream = up.URL
			c.Listeners[0].HTTP3 = true
			c.Listeners[0].EarlyDataTrusted = tc.trusted
		})
		pool := x509.NewCertPool()
		pool.AddCert(cert.Leaf)
		tr := &http3.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}
		t.Cleanup(func() { tr.Close() })
		for _, values := range [][]string{{"1"}, {"0", "1"}} {
			path := fmt.Sprintf("/%s/%d", strings.Join(tc.trusted, ""), len(values))
			req, _ := http.NewRequest(http.MethodPost, "https://"+s.Addrs()[0]+path, strings.NewReader("body"))
			req.Header[EarlyDataHeader] = values
			resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 3 {
				t.Fatalf("%s: %s %d", path, resp.Proto, resp.StatusCode)
			}
			if got := up.got(path); got != tc.want {
				t.Errorf("HTTP/3 POST with Early-Data %q, trusted %q: upstream saw %q, want %q", values, tc.trusted, got, tc.want)
			}
		}
	}
}

// TestHTTP3EarlyRequestFromTrustedIntermediary: a trusted intermediary's
// request that is early on this hop too (0-RTT here) follows the node's
// own rules: a GET goes upstream with one "Early-Data: 1" whatever the
// value it came with, a POST gets 425 from the node. Once the handshake
// has completed, its POST with Early-Data goes upstream, marked.
func TestHTTP3EarlyRequestFromTrustedIntermediary(t *testing.T) {
	up := newEarlySeen(t)
	nodes := startH3Farm(t, h3FarmOptions{n: 1, mode: session.Stateful, earlyData: true, upstream: up.URL, earlyTrusted: []string{"127.0.0.0/8"}})
	n := nodes[0]
	for _, tc := range []struct {
		method, path string
		early        bool
		status       int
		upstream     string // "" for nothing
	}{
		{http.MethodGet, "/early-get", true, http.StatusOK, "1"},
		{http.MethodPost, "/early-post", true, http.StatusTooEarly, ""},
		{http.MethodPost, "/late-post", false, http.StatusOK, "1"},
	} {
		cache := newPinnedCache()
		getSession(t, n, cache)
		c := newH3Client(t, cache)
		c.header = http.Header{EarlyDataHeader: {"0", "1"}}
		addr := net.Addr(n.addr)
		if tc.early {
			addr = newRelay(t, n.addr, time.Second).addr()
		}
		r := c.do(t, addr, tc.method, tc.path, tc.early)
		// Sent without early set, the POST waits for the handshake (the
		// connection may still have used 0-RTT).
		if tc.early && !r.used0RTT || r.status != tc.status {
			st := n.s.QUICStats()
			t.Fatalf("%s %s: 0-RTT %v (resumed %v), status %d (%s); want status %d; n1's early data so far: offered %d, accepted %d, rejected %v",
				tc.method, tc.path, r.used0RTT, r.resumed, r.status, r.body, tc.status, st.EarlyDataOffered, st.EarlyDataAccepted, st.EarlyDataRejected)
		}
		if got := up.got(tc.path); got != tc.upstream {
			t.Fatalf("%s %s: upstream saw %q, want %q", tc.method, tc.path, got, tc.upstream)
		}
	}
}

// BenchmarkRelayedEarlyData measures the decision on a request's
// Early-Data field, made for every HTTP request: with no field (most
// requests), and with one from a trusted and from an untrusted address
// (a list of 4 ranges).
func BenchmarkRelayedEarlyData(b *testing.B) {
	trust, err := parseEarlyTrust([]string{"192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32", "203.0.113.0/24"})
	if err != nil {
		b.Fatal(err)
	}
	rt := &route{earlyTrust: trust}
	for _, bc := range []struct {
		name, remote string
		field        bool
	}{
		{"none", "203.0.113.7:40000", false},
		{"trusted", "203.0.113.7:40000", true},
		{"untrusted", "[2001:db9::1]:40000", true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			req := &http.Request{RemoteAddr: bc.remote, Header: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				if bc.field {
					req.Header[EarlyDataHeader] = nil
				}
				rt.relayedEarlyData(req)
			}
		})
	}
}
