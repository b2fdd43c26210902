package session_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/metric"
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
	cached, _ := metric.Value(cache.Metrics(), "tlsfarm_cache_sessions")
	fmt.Println("cached:", cached)
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

// ExampleCache_HandshakeComplete reports completed handshakes to a
// single-use cache, so that a session is retired as soon as a handshake that
// resumed it completes, and a handshake that fails late gives its session
// back. (Without the call, single use still holds: see HandshakeComplete.)
// A client that presents the same ticket a second time gets a full
// handshake.
func ExampleCache_HandshakeComplete() {
	cache, err := session.New(&session.Config{SingleUse: true})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	cert, pool := tlstest.SharedCert()
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	cache.Install(cfg)

	// With net/http: report each connection once its handshake is done,
	// and one that closes before its first request.
	srv := &http.Server{
		TLSConfig: cfg,
		ConnState: func(c net.Conn, state http.ConnState) {
			if tc, ok := c.(*tls.Conn); ok && (state == http.StateActive || state == http.StateClosed) {
				cache.HandshakeComplete(tc)
			}
		},
	}
	_ = srv // srv.ListenAndServeTLS("", "")

	// Here, over an in-memory pipe, with a client that keeps offering the
	// first ticket it was given.
	client := &tls.Config{RootCAs: pool, ServerName: "localhost", ClientSessionCache: &firstTicket{}}
	for range 3 {
		cs, err := tlstest.PipeHandshake(cfg, client, cache.HandshakeComplete)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("resumed:", cs.DidResume)
	}
	// Output:
	// resumed: false
	// resumed: true
	// resumed: false
}

// firstTicket is a client session cache that keeps only the first session
// it is given, so that the client presents that ticket on every connection.
type firstTicket struct{ cs *tls.ClientSessionState }

func (f *firstTicket) Get(string) (*tls.ClientSessionState, bool) { return f.cs, f.cs != nil }

func (f *firstTicket) Put(_ string, cs *tls.ClientSessionState) {
	if f.cs == nil {
		f.cs = cs
	}
}

// ExampleCache_Remove revokes a session and the rest of its resumption chain.
func ExampleCache_Remove() {
	cache, _ := session.New(nil)
	defer cache.Close()
	id := cache.NewID()
	cache.Insert(id, session.Record{State: []byte{1}, Expires: time.Now().Add(time.Minute)}, session.OriginAPI)
	_, removed := cache.Remove(id)
	cached, _ := metric.Value(cache.Metrics(), "tlsfarm_cache_sessions")
	fmt.Println(removed, cached)
	// Output: true 0
}

// ExampleCache_Join shares sessions between two servers: b asks a farm for
// the sessions it does not hold, here a Farm that looks them up in a's
// cache, as a farm's shared store would answer.
func ExampleCache_Join() {
	// The servers of a farm share their ID keys (package farm derives them
	// from the farm's secret), so that each accepts the IDs the others mint.
	key := session.IDKey{ID: 1, Key: [32]byte{1}}
	a, _ := session.New(nil)
	b, _ := session.New(nil)
	defer a.Close()
	defer b.Close()
	a.SetIDKeys(key)
	b.SetIDKeys(key)
	leave := b.Join(otherCache{a}, 0)
	defer leave()

	cert, pool := tlstest.SharedCert()
	cfgA := &tls.Config{Certificates: []tls.Certificate{cert}}
	cfgB := &tls.Config{Certificates: []tls.Certificate{cert}}
	a.Install(cfgA)
	b.Install(cfgB)
	client := &tls.Config{RootCAs: pool, ServerName: "localhost",
		ClientSessionCache: tls.NewLRUClientSessionCache(1)}
	if _, err := tlstest.PipeHandshake(cfgA, client, nil); err != nil {
		log.Fatal(err)
	}
	cs, err := tlstest.PipeHandshake(cfgB, client, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("resumed on b:", cs.DidResume)
	// Output: resumed on b: true
}

// otherCache is a Farm that finds sessions in another server's cache.
type otherCache struct{ c *session.Cache }

func (o otherCache) Load(_ context.Context, id session.ID) (*session.Record, error) {
	for got, r := range o.c.Snapshot(-1) {
		if got == id {
			return &r, nil
		}
	}
	return nil, nil
}

func (otherCache) Claim(context.Context, session.ID) (bool, error) { return true, nil }
func (otherCache) Release(session.ID, session.Record)              {}

// ExampleCache_Metrics reads the cache's counters as the admin API exports
// them.
func ExampleCache_Metrics() {
	cache, _ := session.New(nil)
	defer cache.Close()
	id := cache.NewID()
	cache.Insert(id, session.Record{State: []byte{1}, Expires: time.Now().Add(time.Minute)}, session.OriginAPI)
	cache.GetBuffer(id, nil)
	cache.GetBuffer(cache.NewID(), nil)
	for _, s := range cache.Metrics() {
		if s.Name == "tlsfarm_cache_lookups_total" || s.Name == "tlsfarm_cache_sessions" {
			fmt.Println(s)
		}
	}
	// Output:
	// tlsfarm_cache_sessions 1
	// tlsfarm_cache_lookups_total{result="hit"} 1
	// tlsfarm_cache_lookups_total{result="miss"} 1
}

// ExampleCache_Install installs a cache in a server configuration that
// picks a certificate per client with GetConfigForClient: Install is called
// after GetConfigForClient is set, and every handshake, whichever config it
// ends with, issues and resumes sessions through the cache.
func ExampleCache_Install() {
	cache, err := session.New(nil)
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	cert, pool := tlstest.SharedCert()
	site := &tls.Config{Certificates: []tls.Certificate{cert}}
	cfg := &tls.Config{
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			return site, nil // one config per server name, in a real server
		},
	}
	cache.Install(cfg) // after GetConfigForClient, which it wraps

	client := &tls.Config{RootCAs: pool, ServerName: "localhost",
		ClientSessionCache: tls.NewLRUClientSessionCache(1)}
	for range 2 {
		cs, err := tlstest.PipeHandshake(cfg, client, nil)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("resumed:", cs.DidResume)
	}
	// Output:
	// resumed: false
	// resumed: true
}

// ExampleCache_AddHook counts the sessions a cache inserts and removes, and
// unregisters the hook when it is no longer wanted.
func ExampleCache_AddHook() {
	cache, _ := session.New(nil)
	defer cache.Close()
	remove := cache.AddHook(session.EventNew|session.EventRemove, func(ev session.Event) {
		if ev.Kind == session.EventRemove {
			fmt.Println(ev.Kind, ev.Reason, "from", ev.Origin)
			return
		}
		fmt.Println(ev.Kind, "from", ev.Origin)
	})
	id := cache.NewID()
	cache.Insert(id, session.Record{State: []byte{1}, Expires: time.Now().Add(time.Minute)}, session.OriginAPI)
	cache.Remove(id)
	remove()
	cache.Insert(cache.NewID(), session.Record{State: []byte{1}, Expires: time.Now().Add(time.Minute)}, session.OriginAPI)
	// Output:
	// new from api
	// remove removed from api
}

// ExampleCache_Insert adds a session that another server issued, as a
// plugin does with what its peers send: OriginPeer tells the other hooks
// not to send it back out. The ID must carry a tag under the cache's ID
// keys, so the servers share them.
func ExampleCache_Insert() {
	key := session.IDKey{ID: 1, Key: [32]byte{1}}
	issuer, _ := session.New(nil)
	cache, _ := session.New(nil)
	defer issuer.Close()
	defer cache.Close()
	issuer.SetIDKeys(key)
	cache.SetIDKeys(key)

	id := issuer.NewID() // in a farm, the ID arrives with the record
	err := cache.Insert(id, session.Record{
		State:      []byte("serialized tls.SessionState"),
		ServerName: "example.com",
		Expires:    time.Now().Add(time.Hour),
	}, session.OriginPeer)
	fmt.Println("inserted:", err == nil)

	// An ID not minted under the cache's keys is refused before any lookup.
	err = cache.Insert(session.ID{}, session.Record{State: []byte{1}, Expires: time.Now().Add(time.Hour)}, session.OriginPeer)
	fmt.Println("forged ID refused:", err != nil)
	// Output:
	// inserted: true
	// forged ID refused: true
}

// ExampleCache_Get reads back, as a tls.SessionState, a session that a
// handshake stored, as a plugin that inspects sessions does. Get reports
// false for an ID the cache does not hold.
func ExampleCache_Get() {
	cache, _ := session.New(nil)
	defer cache.Close()
	var issued session.ID
	cache.AddHook(session.EventNew, func(ev session.Event) { issued = ev.ID })

	cert, pool := tlstest.SharedCert()
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	cache.Install(cfg)
	client := &tls.Config{RootCAs: pool, ServerName: "localhost",
		ClientSessionCache: tls.NewLRUClientSessionCache(1)}
	if _, err := tlstest.PipeHandshake(cfg, client, nil); err != nil {
		log.Fatal(err)
	}

	state, ok := cache.Get(issued) // the caller owns state
	fmt.Println("cached:", ok, state != nil)
	_, ok = cache.Get(cache.NewID())
	fmt.Println("unknown:", ok)
	// Output:
	// cached: true true
	// unknown: false
}
