package session_test

import (
	"crypto/tls"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// Example serves TLS with a session cache: tickets are session IDs, every
// new session fires a hook, and a returning client resumes.
func Example() {
	cache, err := session.New(&session.Config{
		Lifetime: time.Hour, // the rest is ATS-like defaults
	})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	// A plugin watches sessions come and go. Hooks run synchronously on the
	// handshake's goroutine: one that does I/O hands the event to a
	// goroutine of its own.
	cache.AddHook(session.EventNew|session.EventRemove, func(ev session.Event) {
		fmt.Printf("%s from %s\n", ev.Kind, ev.Origin)
	})

	cert, pool := tlstest.SharedCert()
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	cache.Install(cfg)

	// With net/http: srv := &http.Server{TLSConfig: cfg}.
	client := &tls.Config{RootCAs: pool, ServerName: "localhost",
		ClientSessionCache: tls.NewLRUClientSessionCache(1)}
	for range 2 {
		cs, err := tlstest.PipeHandshake(cfg, client, nil)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("resumed:", cs.DidResume)
	}
	fmt.Println("cached:", cache.Len())
	// Output:
	// new from handshake
	// resumed: false
	// new from handshake
	// resumed: true
	// cached: 2
}

// ExampleCache_GetBuffer copies a session into a caller's buffer, as ATS's
// TSSslSessionGetBuffer does, growing the buffer when it is too short.
func ExampleCache_GetBuffer() {
	cache, _ := session.New(nil)
	defer cache.Close()
	id := cache.NewID()
	cache.Insert(id, session.Record{State: make([]byte, 100), Expires: time.Now().Add(time.Minute)}, session.OriginAPI)

	buf := make([]byte, 64)
	n, ok := cache.GetBuffer(id, buf)
	if ok && n > len(buf) {
		buf = make([]byte, n)
		n, ok = cache.GetBuffer(id, buf)
	}
	fmt.Println(ok, n, len(buf[:n]))
	// Output: true 100 100
}

// ExampleCache_HandshakeComplete retires single-use sessions once a
// handshake that resumed them has completed.
func ExampleCache_HandshakeComplete() {
	cache, _ := session.New(&session.Config{SingleUse: true})
	defer cache.Close()
	cfg := &tls.Config{}
	cache.Install(cfg)
	srv := &http.Server{
		TLSConfig: cfg,
		ConnState: func(c net.Conn, state http.ConnState) {
			if tc, ok := c.(*tls.Conn); ok && state == http.StateActive {
				cache.HandshakeComplete(tc)
			}
		},
	}
	_ = srv // srv.ListenAndServeTLS(certFile, keyFile)
}

// ExampleCache_Remove revokes a session and the rest of its resumption chain.
func ExampleCache_Remove() {
	cache, _ := session.New(nil)
	defer cache.Close()
	id := cache.NewID()
	cache.Insert(id, session.Record{State: []byte{1}, Expires: time.Now().Add(time.Minute)}, session.OriginAPI)
	_, removed := cache.Remove(id)
	fmt.Println(removed, cache.Len())
	// Output: true 0
}
