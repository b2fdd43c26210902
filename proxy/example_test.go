package proxy_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/tlsfarm/tlsfarm/proxy"
	"github.com/tlsfarm/tlsfarm/session"
)

// A terminator on a loopback port with the built-in upstream, which answers
// each request with the connection's Facts: the client's second connection
// resumes the session of its first. In a farm, the cache is the one given
// to farm.Join, and a client resumes on any server of the farm.
func Example() {
	cache, err := session.New(&session.Config{Lifetime: time.Hour})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	cert, err := proxy.SelfSigned("localhost") // or tls.LoadX509KeyPair
	if err != nil {
		log.Fatal(err)
	}
	srv, err := proxy.New(proxy.Config{
		Node:  "example",
		Cache: cache,
		// Ring: the ticket keys, for the cache's Stateless and Mixed
		// modes (in a farm, kept by farm.Node.RotateTicketKeys).
		Listeners: []proxy.Listener{{
			Address:      "127.0.0.1:0", // port 0: any free port
			Certificates: []proxy.Certificate{{Certificate: cert}},
			NextProtos:   []string{"h2", "http/1.1"},
			Upstream:     "builtin",
		}},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		log.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx) // lets open connections finish, until ctx ends
	}()

	// A client that trusts the certificate and keeps its sessions. Without
	// keep-alives each request is a new connection, and so a handshake.
	client := newClient(cert)
	defer client.CloseIdleConnections()
	for range 2 {
		resp, err := client.Get("https://" + srv.Addrs()[0] + "/")
		if err != nil {
			log.Fatal(err)
		}
		var f proxy.Facts
		err = json.NewDecoder(resp.Body).Decode(&f)
		resp.Body.Close()
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(f.Node, f.TLSVersion, f.HTTPProtocol, "resumed:", f.Resumed)
	}
	for _, h := range srv.Stats().Handshakes {
		fmt.Printf("handshakes: %s resumed=%v: %d\n", tls.VersionName(h.Version), h.Resumed, h.Count)
	}
	// Output:
	// example TLS 1.3 HTTP/2.0 resumed: false
	// example TLS 1.3 HTTP/2.0 resumed: true
	// handshakes: TLS 1.3 resumed=false: 1
	// handshakes: TLS 1.3 resumed=true: 1
}

// A terminator in front of an HTTP application: the reverse proxy tells the
// application, in the ResumedHeader, whether the connection resumed a
// session, and forwards the client's address and the original scheme.
func ExampleListener_upstream() {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Printf("app: %s %s resumed=%s proto=%s\n", r.Method, r.URL.Path,
			r.Header.Get(proxy.ResumedHeader), r.Header.Get("X-Forwarded-Proto"))
	}))
	defer app.Close()

	cache, err := session.New(nil)
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	cert, err := proxy.SelfSigned("localhost")
	if err != nil {
		log.Fatal(err)
	}
	srv, err := proxy.New(proxy.Config{
		Cache: cache,
		Listeners: []proxy.Listener{{
			Address:      "127.0.0.1:0",
			Certificates: []proxy.Certificate{{Certificate: cert}},
			Upstream:     app.URL, // "http://127.0.0.1:<port>"
		}},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		log.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()

	client := newClient(cert)
	defer client.CloseIdleConnections()
	for _, path := range []string{"/first", "/second"} {
		resp, err := client.Get("https://" + srv.Addrs()[0] + path)
		if err != nil {
			log.Fatal(err)
		}
		resp.Body.Close()
	}
	fmt.Println("proxied:", srv.Stats().UpstreamHTTPRequests)
	// Output:
	// app: GET /first resumed=0 proto=https
	// app: GET /second resumed=1 proto=https
	// proxied: 2
}

// newClient returns an HTTP client that trusts cert, keeps TLS sessions, and
// makes a new connection for each request.
func newClient(cert *tls.Certificate) *http.Client {
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{
			RootCAs:            roots,
			ServerName:         "localhost",
			ClientSessionCache: tls.NewLRUClientSessionCache(8),
		},
		ForceAttemptHTTP2: true,
		DisableKeepAlives: true,
	}}
}
