package farm

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// movingBus is a bus whose connection the test moves to another server:
// its subscription goes down, and comes back up on the new one (as a
// NATS client's reconnect to another server of its cluster). It marks
// its delivery now, and publishes nothing.
type movingBus struct {
	mu     sync.Mutex
	server string
	moves  chan string
}

func (*movingBus) Publish(context.Context, ...[]byte) error { return nil }
func (*movingBus) DeliveredThrough() time.Time              { return time.Now() }

func (b *movingBus) ConnectedServer() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.server
}

func (b *movingBus) Subscribe(ctx context.Context, _ func([]byte), state func(bool, error)) error {
	state(true, nil)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case s := <-b.moves:
			state(false, errors.New("connection lost"))
			b.mu.Lock()
			b.server = s
			b.mu.Unlock()
			state(true, nil)
		}
	}
}

// TestPeerMarkOwnServerMoved: b is on Y, x1 on X has answered b's
// request, y1 on Y (b's own server) has answered none, and need not. b's
// connection moves to X: now y1 is on another server, whose route to X
// may hold what y1 published, and x1 on b's own. From the moment b's
// subscription is back up, its mark must be held back to Y's (none
// answered: zero), not wait for b's next msgMark to learn where it is
// (until then it counted X's answer and skipped Y's peers).
func TestPeerMarkOwnServerMoved(t *testing.T) {
	secret := NewSecret(1)
	cache, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	bus := &movingBus{server: "Y", moves: make(chan string)}
	b, err := Join(context.Background(), Config{Farm: "bench", Secrets: []Secret{secret}, Cache: cache, Bus: bus,
		PeerMarkInterval: time.Hour, TallyInterval: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	x1, y1 := markNode(t, secret, "X"), markNode(t, secret, "Y")
	current := func() bool {
		m := b.markedThrough(bus)
		return !m.IsZero() && time.Since(m) < time.Minute
	}

	b.pm.nextMark(0, "Y") // b on Y
	b.receive(sealMark(y1, 0, "Y"))
	x1.receive(sealMark(b, 0, "Y"))
	b.receive(sealMark(x1, 0, "X")) // x1's answer
	if !current() {
		t.Fatalf("x1 on X answered, y1 is on b's server: floor %d, not current", b.pm.floor.Load())
	}

	bus.moves <- "X"
	deadline := time.Now().Add(10 * time.Second)
	for b.ctr.connects.Load() < 2 || !b.connected.Load() {
		if time.Now().After(deadline) {
			t.Fatal("b's subscription did not come back up")
		}
		time.Sleep(time.Millisecond)
	}
	if current() {
		t.Errorf("b's connection moved to X, y1 on Y answered none of its requests, yet its mark is current (floor %d)", b.pm.floor.Load())
	}
	// Its next msgMark, to X, says so too.
	b.pm.nextMark(0, "X")
	if current() {
		t.Errorf("after b's msgMark to X: current, floor %d", b.pm.floor.Load())
	}
}

// TestPeerMarkForgetOpensGapFirst: b's only peer on another server, x on
// X, has answered b; it goes silent past the bound, and b's marker (its
// step run by the test, at a tick past the bound) forgets it, which
// raises b's mark (no server left to wait for). The reach must restart and
// the gap open before the mark rises: a hit or carried copy checked in
// between would find the mark current and no gap open, and resume
// unchecked what x published into a route that holds it. The test holds
// the lock the reach's restart takes, so the step stops there: b's mark
// must not have risen yet.
func TestPeerMarkForgetOpensGapFirst(t *testing.T) {
	srv := redistest.Start(t)
	store, err := redisbus.Open(srv.URL(), "bench")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	secret := NewSecret(1)
	cache, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	b, err := Join(context.Background(), Config{Farm: "bench", Secrets: []Secret{secret}, Cache: cache, Bus: serverBus{server: "Y"},
		Records: store, Coord: store, PeerMarkInterval: time.Hour, TallyInterval: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if b.hitMarker == nil {
		t.Fatal("b has no hit gate")
	}
	x := markNode(t, secret, "X")
	x.receive(sealMark(b, 0, "Y"))
	b.receive(sealMark(x, 0, "X"))
	if f := b.pm.floor.Load(); f <= 0 {
		t.Fatalf("x answered b: floor %d", f)
	}
	g0 := b.gap.Load() >> 1

	b.deg.update.Lock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.forgetSilentPeers(time.Now().Add(peerMarkForgetAfter(b.pm.interval) + time.Second))
	}()
	time.Sleep(200 * time.Millisecond) // the step runs up to the lock
	risen := b.pm.floor.Load() == noPeers
	b.deg.update.Unlock()
	<-done
	if risen {
		t.Error("b's mark rose as it forgot x, before its reach restarted and the gap opened")
	}
	if b.pm.floor.Load() != noPeers || b.gap.Load()>>1 == g0 {
		t.Fatalf("b forgot x, silent past the bound: floor %d, gaps %d (before %d)", b.pm.floor.Load(), b.gap.Load()>>1, g0)
	}
}

// TestPeerMarkForgetLongInterval: with a PeerMarkInterval of five
// minutes, a peer heard three minutes ago has not missed a msgMark: b
// must not count it gone (past the two minutes that suit the default
// interval), which would settle a gap at every interval and never let the
// mark be current for long.
func TestPeerMarkForgetLongInterval(t *testing.T) {
	secret := NewSecret(1)
	cache, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	b, err := Join(context.Background(), Config{Farm: "bench", Secrets: []Secret{secret}, Cache: cache, Bus: serverBus{server: "Y"},
		PeerMarkInterval: 5 * time.Minute, TallyInterval: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	x := markNode(t, secret, "X")
	b.pm.nextMark(0, "Y")
	x.receive(sealMark(b, 0, "Y"))
	b.receive(sealMark(x, 0, "X"))
	reach0 := b.reachSince.Load()

	b.forgetSilentPeers(time.Now().Add(3 * time.Minute))
	if n := b.pm.forgotten.Load(); n != 0 || b.pm.floor.Load() <= 0 {
		t.Errorf("x, heard within b's interval, was forgotten (%d), floor %d", n, b.pm.floor.Load())
	}
	if b.reachSince.Load() != reach0 {
		t.Error("b restarted its reach, x heard within its interval")
	}
	// Silent for 60 intervals: gone.
	b.forgetSilentPeers(time.Now().Add(301 * time.Minute))
	if n := b.pm.forgotten.Load(); n != 1 || b.pm.floor.Load() != noPeers {
		t.Errorf("x, silent for 60 intervals: forgotten %d, floor %d", n, b.pm.floor.Load())
	}
}
