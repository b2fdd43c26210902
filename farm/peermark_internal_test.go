package farm

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// serverBus is silentBus that marks its delivery now and says it is on
// server, for the per-server marks (see peermark.go).
type serverBus struct {
	silentBus
	server string
}

func (serverBus) DeliveredThrough() time.Time              { return time.Now() }
func (b serverBus) ConnectedServer() string                { return b.server }
func (serverBus) Publish(context.Context, ...[]byte) error { return nil }

// markNode joins a node of farm "bench" on a serverBus on server, its
// msgMarks sent only by the test (a PeerMarkInterval of an hour).
func markNode(tb testing.TB, secret Secret, server string) *Node {
	tb.Helper()
	cache, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cache.Close() })
	n, err := Join(context.Background(), Config{Farm: "bench", Secrets: []Secret{secret}, Cache: cache, Bus: serverBus{server: server},
		PeerMarkInterval: time.Hour, TallyInterval: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { n.Close() })
	return n
}

// sealMark returns from's msgMark (flags), published to server, as its
// peers receive it.
func sealMark(from *Node, flags byte, server string) []byte {
	hdr := header{typ: msgMark, time: from.cfg.Now(), sender: from.instance, farm: from.cfg.Farm}
	return from.keys.seal(nil, hdr, from.pm.nextMark(flags, server), nil)
}

// TestPeerMarkPerServer: b, on server Y, waits for no peer on its own
// server (its bus's mark covers Y); for server X it takes the newest of
// its t0s that any peer on X answered; it is held back to the oldest
// server's, zero while a server's peers answered none; a peer that leaves
// no longer holds it back; one silent past the bound is forgotten.
func TestPeerMarkPerServer(t *testing.T) {
	secret := NewSecret(1)
	b := markNode(t, secret, "Y")
	x1, x2, y1, z1 := markNode(t, secret, "X"), markNode(t, secret, "X"), markNode(t, secret, "Y"), markNode(t, secret, "Z")
	bus := b.cfg.Bus.(serverBus)
	floor := func() int64 { return b.pm.floor.Load() }
	current := func() bool {
		m := b.markedThrough(bus)
		return !m.IsZero() && time.Since(m) < time.Minute
	}
	b.receive(sealMark(b, 0, "Y")) // its own: skipped
	b.pm.nextMark(0, "Y")          // b on Y
	if !current() || floor() != noPeers {
		t.Fatalf("no peers: floor %d, current %t", floor(), current())
	}
	b.receive(sealMark(y1, 0, "Y"))
	if floor() != noPeers || !current() {
		t.Fatalf("a peer on b's own server held the mark back: floor %d", floor())
	}
	b.receive(sealMark(x1, 0, "X"))
	b.receive(sealMark(x2, 0, "X"))
	if floor() != 0 || current() {
		t.Fatalf("peers on X answered nothing, yet floor %d, current %t", floor(), current())
	}
	// b's request, heard by x2 only, answered in x2's next msgMark.
	req := sealMark(b, 0, "Y")
	x2.receive(req)
	b.receive(sealMark(x2, 0, "X"))
	t0 := floor()
	if t0 <= 0 || !current() {
		t.Fatalf("x2 answered b's request: floor %d, current %t", t0, current())
	}
	// y1, on b's server, hears b's request and does not answer it.
	y1.receive(sealMark(b, 0, "Y")) // a message is opened in place: a new one
	if y1.pm.received.Load() == 0 {
		t.Fatal("y1 did not take b's request")
	}
	if _, answers, err := parseMark(y1.pm.nextMark(0, "Y")); err != nil || len(answers) != 0 {
		t.Fatalf("y1 answered b, on its own server: %d bytes of answers, %v", len(answers), err)
	}
	// z1 on Z answers nothing yet: held back to zero.
	b.receive(sealMark(z1, 0, "Z"))
	if floor() != 0 {
		t.Fatalf("z1 on Z answered nothing, yet floor %d", floor())
	}
	// z1 leaves: X's answer counts again.
	b.receive(sealMark(z1, markLeaving, "Z"))
	if floor() != t0 {
		t.Fatalf("after z1 left: floor %d, want %d", floor(), t0)
	}
	// An answer to another node is not b's.
	y1.pm.nextMark(0, "Y")
	x1.receive(sealMark(y1, 0, "Y"))
	b.receive(sealMark(x1, 0, "X"))
	if floor() != t0 {
		t.Fatalf("x1 answered y1, and b's floor moved: %d, want %d", floor(), t0)
	}
	// x2 moves to Y: its answers so far went through X, which now has
	// x1 only, who answered none of b's.
	b.receive(sealMark(x2, 0, "Y"))
	if floor() != 0 {
		t.Fatalf("x2 left X for Y, X's only peer answered none, yet floor %d", floor())
	}
	if !b.pm.forgetSilent(time.Now().Add(time.Second), true) || floor() != noPeers {
		t.Fatalf("every peer forgotten, yet floor %d", floor())
	}
	// A body that does not decode is rejected.
	before := b.ctr.rejected[rejectBody].Load()
	b.receive(x1.keys.seal(nil, header{typ: msgMark, time: time.Now(), sender: x1.instance, farm: "bench"}, []byte{0, 1}, nil))
	if b.ctr.rejected[rejectBody].Load() != before+1 {
		t.Fatal("a malformed msgMark body was not rejected")
	}
}

// BenchmarkReceiveMark measures what a node spends on one peer's msgMark
// in a farm of 16 nodes on two servers (the peer answers 15 requesters,
// this node among them): opening, decoding, and the floor's update.
func BenchmarkReceiveMark(b *testing.B) {
	secret := NewSecret(1)
	recv, send := markNode(b, secret, "Y"), markNode(b, secret, "X")
	recv.pm.nextMark(0, "Y")
	var msgs [][]byte
	for range b.N {
		for i := range 14 {
			send.pm.asked[uint64(i)+2] = 1
		}
		send.pm.asked[recv.instance] = recv.pm.now()
		msgs = append(msgs, sealMark(send, 0, "NAB5DHZ3H4Y3SNGE4XR3V5NVD2TG6C5Y4BRGGZYHE5C3KQ3WNXXM6WUX"))
	}
	timeReceive(b, recv, msgs)
	if recv.pm.received.Load() != uint64(b.N) {
		b.Fatalf("received %d of %d", recv.pm.received.Load(), b.N)
	}
}

// BenchmarkMarkedThrough measures the delivery mark a hit reads (the hit
// gate, carried copies): the bus's alone (no peer on another server), and
// held back to a peer server's.
func BenchmarkMarkedThrough(b *testing.B) {
	secret := NewSecret(1)
	for _, peers := range []bool{false, true} {
		name := "bus-only"
		if peers {
			name = "other-server"
		}
		b.Run(name, func(b *testing.B) {
			n := markNode(b, secret, "Y")
			n.pm.nextMark(0, "Y")
			if peers {
				x := markNode(b, secret, "X")
				x.receive(sealMark(n, 0, "Y"))
				n.receive(sealMark(x, 0, "X"))
			}
			var bus transport.DeliveryMarker = n.cfg.Bus.(serverBus)
			b.ReportAllocs()
			zero := 0
			for b.Loop() {
				if n.markedThrough(bus).IsZero() {
					zero++
				}
			}
			if zero != 0 {
				b.Fatalf("zero %d times", zero)
			}
		})
	}
}
