package admin_test

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/tlsfarm/tlsfarm/admin"
	"github.com/tlsfarm/tlsfarm/session"
)

// The admin API mounted under /admin/ on a server's own mux, on a loopback
// listener. Reading needs no token; revoking a session does. The token here
// is drawn at random; a daemon reads it from a file only its owner can read
// (config's admin.token_file), and never logs it.
func Example() {
	cache, err := session.New(nil)
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	token := rand.Text()
	h, err := admin.New(admin.Config{
		NodeName: "example",
		Cache:    cache,
		Token:    func() string { return token },
		// In a farm: Node (the *farm.Node, so that a revocation reaches
		// every node), Ring and Rotation (the ticket keys), Proxy and
		// Ready (the terminator's counters and listeners).
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/admin/", http.StripPrefix("/admin", h))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	base := "http://" + ln.Addr().String() + "/admin"

	// A session, as a handshake would have stored it.
	id := cache.NewID()
	cache.Insert(id, session.Record{State: []byte{1}, Expires: time.Now().Add(time.Hour)}, session.OriginAPI)

	resp, err := http.Get(base + "/healthz")
	if err != nil {
		log.Fatal(err)
	}
	var health admin.Health
	err = json.NewDecoder(resp.Body).Decode(&health)
	resp.Body.Close()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("healthz:", resp.StatusCode, health.Status, health.Node, "sessions:", health.Sessions)

	revoke := func(bearer string) {
		req, _ := http.NewRequest("DELETE", base+"/sessions/"+id.String(), nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			log.Fatal(err)
		}
		defer resp.Body.Close()
		var r admin.RevokeResponse // only on success: an error is {"error": "..."}
		json.NewDecoder(resp.Body).Decode(&r)
		fmt.Printf("revoke: %s %+v\n", resp.Status, r)
	}
	revoke("")    // refused
	revoke(token) // revoked
	revoke(token) // already gone
	// Output:
	// healthz: 200 ok example sessions: 1
	// revoke: 401 Unauthorized {Revoked:false Farm: Note:}
	// revoke: 200 OK {Revoked:true Farm:none Note:}
	// revoke: 404 Not Found {Revoked:false Farm: Note:}
}
