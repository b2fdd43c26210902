package farm_test

import (
	"context"
	"crypto/tls"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// heldWrites holds a transport's writes (as waitingWrites' wait), once
// hold is called, until release: the node's publisher stays in its batch
// while new items queue behind it.
type heldWrites struct {
	mu      sync.Mutex
	gate    chan struct{} // nil: not held
	waiting chan struct{} // closed when a write first waits at the gate
}

func (h *heldWrites) hold() (waiting <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gate, h.waiting = make(chan struct{}), make(chan struct{})
	return h.waiting
}

func (h *heldWrites) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gate != nil {
		close(h.gate)
		h.gate = nil
	}
}

func (h *heldWrites) wait(ctx context.Context) error {
	h.mu.Lock()
	gate, waiting := h.gate, h.waiting
	if gate != nil {
		select {
		case <-waiting:
		default:
			close(waiting)
		}
	}
	h.mu.Unlock()
	if gate == nil {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-gate:
		return nil
	}
}

// TestQueuedSessionOfRevokedChainNotWritten: n1 resumes a session, and so
// issues a new session of its chain, while its publisher is held in the
// write of an earlier batch; n2 revokes the chain, and n1 hears of it and
// removes the chain, before n1's publisher comes to the new session. The
// publisher must drop it: written to the store after the revocation, its
// record stays there for its whole life, for a node that has not read the
// tombstone (and, in broadcast mode, goes to peers). Before, it was
// written (and published) as queued. A session of another chain queued
// with it is written.
func TestQueuedSessionOfRevokedChainNotWritten(t *testing.T) {
	t.Parallel()
	for _, mode := range []farm.Mode{farm.Broadcast, farm.StoreOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			srv := redistest.Start(t)
			var h1 *heldWrites
			joined := 0
			o := &farmtest.Options{
				Mode: mode,
				NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
					tr := openRedis(t, srv.URL(), farmName)
					if joined++; joined == 1 {
						h1 = &heldWrites{}
						t.Cleanup(h1.release)
						w := &waitingWrites{Transport: tr, wait: h1.wait}
						return w, w
					}
					return tr, tr
				},
				Tweak: func(c *farm.Config) { c.TallyInterval = -1 },
			}
			ms, _ := farmtest.Start(t, 2, o)
			n1, n2 := ms[0], ms[1]

			// The chain's first session, in the store.
			first, clients := farmtest.Issue(t, n1, 1)
			farmtest.Eventually(t, 5*time.Second, "the store has the chain's first session", func() bool { return stored(n1, first[0]) })

			// n1's publisher held in the write of a session of another
			// chain.
			waiting := h1.hold()
			farmtest.Issue(t, n1, 1)
			select {
			case <-waiting:
			case <-time.After(5 * time.Second):
				t.Fatal("n1's publisher did not write")
			}
			// The chain's new session, queued behind it.
			issued := farmtest.HandshakeSessions(n1.Cache)
			if cs := tlstest.MustDial(t, n1.Server.Addr, farmtest.Client(tls.VersionTLS13, clients[0])); !cs.DidResume {
				t.Fatal("the chain's first session was not resumed")
			}
			child := issued()
			if len(child) != 1 {
				t.Fatalf("resumption issued %d sessions", len(child))
			}

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if st, err := n2.Node.RevokeSession(ctx, first[0]); err != nil || st != farm.RevokeApplied {
				t.Fatalf("RevokeSession: %v, %v", st, err)
			}
			farmtest.Eventually(t, 5*time.Second, "n1 removed the revoked chain", func() bool {
				_, ok := n1.Cache.GetBuffer(child[0], nil)
				return !ok
			})
			// A session of another chain, queued behind the new one.
			control, _ := farmtest.Issue(t, n1, 1)
			var heard sync.Map
			n2.Cache.AddHook(session.EventNew, func(ev session.Event) { heard.Store(ev.ID, true) })

			h1.release()
			farmtest.Eventually(t, 5*time.Second, "the store has the session of another chain", func() bool { return stored(n1, control[0]) })
			if mode == farm.Broadcast {
				farmtest.Eventually(t, 5*time.Second, "n2 heard of the session of another chain", func() bool {
					_, ok := heard.Load(control[0])
					return ok
				})
			}
			if stored(n1, child[0]) {
				t.Error("the new session of the revoked chain was written to the store after the revocation")
			}
			if _, ok := n2.Cache.GetBuffer(child[0], nil); ok {
				t.Error("n2 holds the new session of the revoked chain")
			}
		})
	}
}
