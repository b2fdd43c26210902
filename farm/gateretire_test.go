package farm_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestGatedHitHonoursEndElsewhere: n2's bus delivery lags by a second
// (its bus path slowed, its store path direct), past MaxDeliveryLag, so
// its cache hits are gated. S, issued on n2 and held by n1 too, ends on
// n1 while the message that says so is on its way to n2: retired
// (Cache.Retire deletes its record), or resumed there with a 200 ms
// ResumeGrace (its record rewritten to end with the grace), with n2 asked
// 100 ms after the grace ran out. Both are farm promises (single use,
// the grace cut) that must hold on a lagging node: n2 must not resume S
// from its copy, and counts the hit retired. A control session, its
// record whole, still resumes on n2.
//
// Before the gate read the session's record, it read the revocation marks
// only, found none, and resumed S in both cases (gated hits: confirmed).
func TestGatedHitHonoursEndElsewhere(t *testing.T) {
	t.Parallel()
	const grace = 200 * time.Millisecond
	for _, tc := range []struct {
		name string
		end  func(g *gateFarm) // ends S on n1
	}{
		{"retired", func(g *gateFarm) {
			if !g.n1.Cache.Retire(g.sid, session.OriginAPI) {
				g.t.Fatal("n1 does not hold S")
			}
		}},
		{"cut", func(g *gateFarm) {
			// The client keeps S's ticket: n1 resumes S and cuts it to
			// its grace.
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
			key := "s:" + hex.EncodeToString(g.sid[:])
			whole, err := g.n1.Store.GetRecord(t.Context(), key)
			if err != nil {
				t.Fatalf("S's record: %v", err)
			}
			g.lagDelivery(time.Second)
			tc.end(g)
			// After the end: a cut's grace runs from the resumption,
			// which a loaded machine may take a while to make (n2 was
			// asked while S's record still granted it grace).
			ended := time.Now()
			farmtest.Eventually(t, 5*time.Second, "n1 wrote S's end to the store", func() bool {
				v, err := g.n1.Store.GetRecord(context.Background(), key)
				return errors.Is(err, transport.ErrNotFound) || err == nil && !bytes.Equal(v, whole)
			})
			time.Sleep(time.Until(ended.Add(grace + 100*time.Millisecond)))
			_, held := lookup(g.n2.Cache, g.sid)
			if g.dial(g.n2, g.sessions[0]) {
				t.Errorf("n2 (delivery lagging, holding S: %v) resumed S, %s on n1 (gated hits: %s)", held, tc.name, g.gatedCounts())
			}
			if !g.dial(g.n2, g.sessions[1]) {
				t.Errorf("n2 did not resume the control session (gated hits: %s)", g.gatedCounts())
			}
			if g.gated("retired") == 0 {
				t.Errorf("n2's gate counted no hit retired (gated hits: %s)", g.gatedCounts())
			}
			if d := g.n2.Bus.(transport.DeliveryMarker).DeliveredThrough(); !d.Before(ended) {
				t.Logf("n2's delivery reached the end of S before the dials (%v after): the check came late", d.Sub(ended))
			}
		})
	}
}

// TestGatedHitHonoursEndElsewhereOpenSSL is TestGatedHitHonoursEndElsewhere
// with openssl as the client: a session saved by openssl s_client
// -sess_out on n2 ends on n1 while n2's delivery lags, and n2 must not
// resume it from openssl's -sess_in. TLS 1.3: openssl resumes it on n1,
// which cuts it to its grace (a resumption there issues a new ticket), and
// n2 is asked once the grace has run out. TLS 1.2: a resumption issues no
// new session and cuts nothing, so n1 retires it (Cache.Retire). In the
// last case n2's delivery lags within MaxDeliveryLag (5 s) but past the
// grace, so the grace is the gate's bound (see farmtest.GraceCutWhileDeliveryLags).
func TestGatedHitHonoursEndElsewhereOpenSSL(t *testing.T) {
	t.Parallel()
	const grace = 300 * time.Millisecond
	for _, tc := range []struct {
		name, tv string
		maxLag   time.Duration
	}{
		{"-tls1_2", "-tls1_2", 150 * time.Millisecond},
		{"-tls1_3", "-tls1_3", 150 * time.Millisecond},
		{"-tls1_3/lag-within-bound", "-tls1_3", 5 * time.Second},
	} {
		tv := tc.tv
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := newGateFarm(t, gateFarmOptions{MaxLag: tc.maxLag, CloseServer: true,
				TweakCache: func(c *session.Config) { c.ResumeGrace = grace }})
			sess := tlstest.SessionFile(t)
			ids := farmtest.HandshakeSessions(g.n2.Cache)
			out := tlstest.OpenSSL(t, g.n2.Server.Addr, tv, "-servername", "localhost", "-sess_out", sess)
			if len(ids()) == 0 {
				t.Fatalf("no session issued: %s", out)
			}
			sid := ids()[0]
			key := "s:" + hex.EncodeToString(sid[:])
			var whole []byte
			farmtest.Eventually(t, 10*time.Second, "n1 holds S, and the store has it", func() bool {
				_, held := lookup(g.n1.Cache, sid)
				v, err := g.n1.Store.GetRecord(t.Context(), key)
				whole = v
				return held && err == nil
			})
			resumed := func(m *farmtest.Member) bool {
				out := tlstest.OpenSSL(t, m.Server.Addr, tv, "-servername", "localhost", "-sess_in", sess)
				return strings.Contains(out, "Reused, ")
			}
			g.lagPast(time.Second, min(2*tc.maxLag, 3*grace))
			if tv == "-tls1_3" {
				if !resumed(g.n1) {
					t.Fatal("openssl's saved session did not resume on n1")
				}
			} else if !g.n1.Cache.Retire(sid, session.OriginAPI) {
				t.Fatal("n1 does not hold S")
			}
			// After the end: the grace runs from the resumption, which
			// openssl makes a while after it starts (a CPU hog: n2 was
			// asked while S's record still granted it grace).
			ended := time.Now()
			farmtest.Eventually(t, 5*time.Second, "n1 wrote S's end to the store", func() bool {
				v, err := g.n1.Store.GetRecord(context.Background(), key)
				return errors.Is(err, transport.ErrNotFound) || err == nil && !bytes.Equal(v, whole)
			})
			time.Sleep(time.Until(ended.Add(grace + 100*time.Millisecond)))
			if resumed(g.n2) {
				t.Errorf("n2 (delivery lagging) resumed openssl's session, ended on n1 (gated hits: %s)", g.gatedCounts())
			}
			if d := g.n2.Bus.(transport.DeliveryMarker).DeliveredThrough(); !d.Before(ended) {
				t.Logf("n2's delivery reached S's end before the dial (%v after): the check came late", d.Sub(ended))
			}
		})
	}
}
