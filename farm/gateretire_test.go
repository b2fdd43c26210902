package farm_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestGateRefusesRetiredWhileDeliveryLags: n2's bus delivery lags past
// MaxDeliveryLag (its bus path slowed, its store path direct), so its
// hits are gated. S, issued on n2, is retired on n1, or resumed there past
// its grace: the retirement deletes S's record from the store, the
// resumption rewrites it cut to its grace,
// and its message is still on its way to n2. n2 must not resume S from
// its cache: its gate reads S's record with the revocation marks. Before,
// the gate read the marks only, found none and resumed S (3 of 3 runs; a
// 300 ms delay planted before a node applied each peer's message showed it
// first, as TestCarriedGraceCut/both resuming P past its grace). A control
// session, still stored whole, resumes.
func TestGateRefusesRetiredWhileDeliveryLags(t *testing.T) {
	t.Parallel()
	const grace = 200 * time.Millisecond
	for _, tc := range []struct {
		name string
		end  func(g *gateFarm) // ends S on n1
	}{
		{"retired", func(g *gateFarm) {
			if !g.n1.Cache.Retire(g.sid, session.OriginAPI) {
				g.t.Fatal("n1 did not hold S")
			}
		}},
		{"resumed past its grace", func(g *gateFarm) {
			// The client keeps S's ticket: n1 resumes S and cuts it
			// to its grace, which then runs out.
			if !tlstest.MustDial(g.t, g.n1.Server.Addr, farmtest.Client(tls.VersionTLS13, g.sessions[0])).DidResume {
				g.t.Fatal("n1 did not resume S")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := newGateFarm(t, gateFarmOptions{MaxLag: 150 * time.Millisecond,
				TweakCache: func(c *session.Config) { c.ResumeGrace = grace }})
			g.issue(2)
			key := "s:" + fmt.Sprintf("%x", g.sid[:])
			stored, err := g.n1.Store.GetRecord(context.Background(), key)
			if err != nil {
				t.Fatal(err)
			}
			g.lagDelivery(time.Second)
			ended := time.Now()
			tc.end(g)
			// Its store write (deleted, or rewritten cut) is what the gate reads.
			farmtest.Eventually(t, 5*time.Second, "n1 wrote S's end to the store", func() bool {
				v, err := g.n1.Store.GetRecord(context.Background(), key)
				return errors.Is(err, transport.ErrNotFound) || err == nil && !bytes.Equal(v, stored)
			})
			time.Sleep(time.Until(ended.Add(grace + 100*time.Millisecond)))
			_, held := lookup(g.n2.Cache, g.sid)
			if g.dial(g.n2, g.sessions[0]) {
				t.Errorf("n2 (its delivery lagging, holding S: %v) resumed S, %s on n1 (gated hits: %s)", held, tc.name, g.gatedCounts())
			}
			if !g.dial(g.n2, g.sessions[1]) {
				t.Errorf("the control session did not resume on n2 (gated hits: %s)", g.gatedCounts())
			}
			if g.gated("retired") == 0 {
				t.Errorf("n2's gate counted no retired hit (gated hits: %s)", g.gatedCounts())
			}
		})
	}
}
