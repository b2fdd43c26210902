package ticket_test

import (
	"crypto/tls"
	"sync/atomic"
	"testing"

	"github.com/tlsfarm/tlsfarm/ticket"
)

var versions = []struct {
	name    string
	version uint16
}{
	{"TLS12", tls.VersionTLS12},
	{"TLS13", tls.VersionTLS13},
}

// TestSessionResumesUnderRingKeys makes full and resumed handshakes against a
// server whose keys come from a ring, and shows that Update takes effect on
// the live server: tickets under keys it no longer holds stop resuming.
func TestSessionResumesUnderRingKeys(t *testing.T) {
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) {
			r := newRing(t, ticket.RingConfig{})
			cfg := serverConfig(t)
			r.Register(cfg)
			addr := startServer(t, cfg)
			client := clientConfig(t, v.version, tls.NewLRUClientSessionCache(8))

			if connect(t, addr, client) {
				t.Fatal("first connection resumed")
			}
			for i := range 2 {
				if !connect(t, addr, client) {
					t.Fatalf("connection %d did not resume", i+2)
				}
			}
			if err := r.Rotate(); err != nil {
				t.Fatal(err)
			}
			if !connect(t, addr, client) {
				t.Fatal("ticket under the previous key did not resume")
			}
			if err := r.Update(newKeys(t, 2)...); err != nil {
				t.Fatal(err)
			}
			if connect(t, addr, client) {
				t.Fatal("ticket resumed after Update removed its key")
			}
			if !connect(t, addr, client) {
				t.Fatal("ticket under the updated key did not resume")
			}
		})
	}
}

// TestFrozenTicketLivesKeepRotations presents one ticket again and again
// through a child config returned by GetConfigForClient: it resumes for Keep
// rotations after its key stopped encrypting and is refused after Keep+1.
// The modes are the ways a child can take its keys from the ring; the last
// shows why a child cloned ahead of time must be registered.
func TestFrozenTicketLivesKeepRotations(t *testing.T) {
	modes := []struct {
		name string
		// child returns GetConfigForClient's result; setup runs once.
		setup func(t *testing.T, r *ticket.Ring, parent *tls.Config) (child func() *tls.Config)
		keep  int
		stale bool // the child ignores rotations
	}{
		{
			name: "registered clone",
			keep: 2,
			setup: func(t *testing.T, r *ticket.Ring, parent *tls.Config) func() *tls.Config {
				child := parent.Clone()
				t.Cleanup(r.Register(child))
				return func() *tls.Config { return child }
			},
		},
		{
			name: "registered clone keep=1",
			keep: 1,
			setup: func(t *testing.T, r *ticket.Ring, parent *tls.Config) func() *tls.Config {
				child := parent.Clone()
				t.Cleanup(r.Register(child))
				return func() *tls.Config { return child }
			},
		},
		{
			name: "registered clone keep=3",
			keep: 3,
			setup: func(t *testing.T, r *ticket.Ring, parent *tls.Config) func() *tls.Config {
				child := parent.Clone()
				t.Cleanup(r.Register(child))
				return func() *tls.Config { return child }
			},
		},
		{
			name: "clone per handshake",
			keep: 2,
			setup: func(t *testing.T, r *ticket.Ring, parent *tls.Config) func() *tls.Config {
				return func() *tls.Config { return parent.Clone() }
			},
		},
		{
			name: "child without keys",
			keep: 2,
			setup: func(t *testing.T, r *ticket.Ring, parent *tls.Config) func() *tls.Config {
				child := serverConfig(t) // never given keys: falls back to parent's
				return func() *tls.Config { return child }
			},
		},
		{
			name:  "unregistered clone keeps stale keys",
			keep:  2,
			stale: true,
			setup: func(t *testing.T, r *ticket.Ring, parent *tls.Config) func() *tls.Config {
				child := parent.Clone()
				return func() *tls.Config { return child }
			},
		},
	}
	for _, m := range modes {
		for _, v := range versions {
			t.Run(m.name+"/"+v.name, func(t *testing.T) {
				r := newRing(t, ticket.RingConfig{Keep: m.keep})
				parent := serverConfig(t)
				t.Cleanup(r.Register(parent))
				child := m.setup(t, r, parent)
				var children atomic.Int64
				parent.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
					children.Add(1)
					return child(), nil
				}
				addr := startServer(t, parent)
				cache := &frozenCache{}
				client := clientConfig(t, v.version, cache)

				if connect(t, addr, client) {
					t.Fatal("first connection resumed")
				}
				if !connect(t, addr, client) {
					t.Fatal("frozen ticket did not resume before any rotation")
				}
				for i := 1; i <= m.keep+1; i++ {
					if err := r.Rotate(); err != nil {
						t.Fatal(err)
					}
					want := i <= m.keep || m.stale
					if got := connect(t, addr, client); got != want {
						t.Fatalf("after %d rotations (Keep %d) the frozen ticket resumed: %v, want %v", i, m.keep, got, want)
					}
				}
				if n := children.Load(); n != int64(m.keep+3) {
					t.Errorf("GetConfigForClient ran %d times, want %d", n, m.keep+3)
				}
			})
		}
	}
}

// TestStagedKeyDecryptsBeforeRotation shows pre-staging: a peer that has
// rotated already (ring B, whose current key is ring A's staged key) issues a
// ticket, and A resumes it before and after A rotates.
func TestStagedKeyDecryptsBeforeRotation(t *testing.T) {
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) {
			a := newRing(t, ticket.RingConfig{})
			b := newRing(t, ticket.RingConfig{Initial: &ticket.State{Current: a.State().Next}})
			stranger := newRing(t, ticket.RingConfig{})
			addrs := make(map[*ticket.Ring]string)
			for _, r := range []*ticket.Ring{a, b, stranger} {
				cfg := serverConfig(t)
				r.Register(cfg)
				addrs[r] = startServer(t, cfg)
			}

			// A ticket from a ring with unrelated keys: the control.
			cache := &frozenCache{}
			connect(t, addrs[stranger], clientConfig(t, v.version, cache))
			if connect(t, addrs[a], clientConfig(t, v.version, cache)) {
				t.Fatal("A resumed a ticket under a stranger's key")
			}

			cache = &frozenCache{}
			client := clientConfig(t, v.version, cache)
			if connect(t, addrs[b], client) {
				t.Fatal("first connection to B resumed")
			}
			if !connect(t, addrs[a], client) {
				t.Fatal("A did not resume a ticket under its staged key")
			}
			if err := a.Rotate(); err != nil {
				t.Fatal(err)
			}
			if !connect(t, addrs[a], client) {
				t.Fatal("A did not resume a ticket under its current key")
			}
		})
	}
}

// TestOneRingDrivesManyListeners serves one ring's keys from two listeners
// with different configs, as two servers of a farm would: a ticket from one
// resumes on the other, across rotations.
func TestOneRingDrivesManyListeners(t *testing.T) {
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) {
			r := newRing(t, ticket.RingConfig{})
			var addrs []string
			for range 2 {
				cfg := serverConfig(t)
				t.Cleanup(r.Register(cfg))
				addrs = append(addrs, startServer(t, cfg))
			}
			client := clientConfig(t, v.version, tls.NewLRUClientSessionCache(1))
			connect(t, addrs[0], client)
			for i := range 4 {
				if err := r.Rotate(); err != nil {
					t.Fatal(err)
				}
				addr := addrs[(i+1)%2]
				if !connect(t, addr, client) {
					t.Fatalf("connection %d to %s did not resume", i+2, addr)
				}
			}
		})
	}
}
