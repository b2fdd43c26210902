package ticket_test

import (
	"context"
	"crypto/tls"
	"slices"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// TestRunOverdueDropsLapsedKeys restores a key set whose current key has
// been due to rotate for a while, lets Run rotate it once, and checks that
// the previous keys the missed rotations would have dropped are gone, both
// from the ring's State and for a real handshake: a ticket under the
// newest previous key resumes only while the schedule keeps that key
// (Keep intervals after Rotated, when it stopped encrypting at the latest).
// Before, the one rotation kept Keep-1 of the restored previous keys
// whatever the delay: a ticket under a key saved 100 hours earlier
// resumed for Keep more rotations, against a documented life of at most
// (Keep+1) intervals.
func TestRunOverdueDropsLapsedKeys(t *testing.T) {
	const keep = 2
	ks := newKeys(t, 4)
	cur, next, p0, p1 := ks[0], ks[1], ks[2], ks[3]

	// A ticket under p0, issued while p0 encrypted.
	issuer := newRing(t, ticket.RingConfig{Keep: keep})
	if err := issuer.Update(p0); err != nil {
		t.Fatal(err)
	}
	issuerCfg := serverConfig(t)
	defer issuer.Register(issuerCfg)()
	frozen := &frozenCache{}
	connect(t, startServer(t, issuerCfg), clientConfig(t, tls.VersionTLS13, frozen))

	for _, tt := range []struct {
		overdue  time.Duration // since Rotated
		wantPrev []ticket.Key
	}{
		{90 * time.Minute, []ticket.Key{cur, p0}}, // due once: the usual rotation
		{150 * time.Minute, []ticket.Key{cur}},    // two missed: p0 lapsed too
		{100 * time.Hour, []ticket.Key{cur}},      // the current key stays, whatever its age
	} {
		clock := newFakeClock()
		restored := ticket.State{Epoch: 3, Current: cur, Next: next, Previous: []ticket.Key{p0, p1}, Rotated: clock.Now().Add(-tt.overdue)}
		r := newRing(t, ticket.RingConfig{Keep: keep, Interval: time.Hour, Now: clock.Now, Initial: &restored})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		deadline := time.Now().Add(10 * time.Second)
		for r.Status().Epoch != 4 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		cancel()
		<-done
		st := r.State()
		if st.Epoch != 4 || st.Current != next {
			t.Fatalf("overdue by %v: epoch %d, current %v; want one rotation to %v", tt.overdue, st.Epoch, st.Current, next)
		}
		if !slices.Equal(st.Previous, tt.wantPrev) {
			t.Errorf("overdue by %v: previous keys %v, want %v", tt.overdue, st.Previous, tt.wantPrev)
		}
		cfg := serverConfig(t)
		unregister := r.Register(cfg)
		resumed := connect(t, startServer(t, cfg), clientConfig(t, tls.VersionTLS13, frozen))
		unregister()
		if want := slices.Contains(tt.wantPrev, p0); resumed != want {
			t.Errorf("overdue by %v: a ticket under the newest restored previous key resumed: %v, want %v", tt.overdue, resumed, want)
		}
	}
}
