package farm

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// FuzzReceiveAny feeds a node what a peer publishes, sealed under the farm's
// key, of any type (msgSessions to msgMark, and types no handler takes)
// with any body, sealed up to a day ago (so that the paths of late
// messages are reached too): receive and every handler behind it (cuts,
// resend asks, tallies, revocations by chain and by ID, marks) take it
// without a panic, and count it received once and rejected at most once.
func FuzzReceiveAny(f *testing.F) {
	secret := NewSecret(1)
	x := markNode(f, secret, "X")
	cache, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { cache.Close() })
	// Tallies on (an interval of an hour: none published during the run).
	b, err := Join(context.Background(), Config{Farm: "bench", Secrets: []Secret{secret}, Cache: cache, Bus: serverBus{server: "Y"},
		PeerMarkInterval: time.Hour, TallyInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { b.Close() })
	t0 := time.Unix(1_700_000_000, 0)
	sessions, _ := appendSessions(nil, []sessionItem{
		{id: session.ID{1}, rec: session.Record{State: []byte("s"), Expires: time.Now().Add(time.Hour), Parent: session.ID{2}}},
	})
	for _, s := range []struct {
		typ  envType
		body []byte
	}{
		{msgSessions, sessions},
		{msgRevoke, appendRevocations(nil, []revocation{{chain: 1, until: time.Now().Add(time.Hour)}})},
		{msgCut, appendCuts(nil, []cut{{id: session.ID{3}}, {id: session.ID{4}, until: time.Now().Add(time.Minute)}})},
		{msgResend, []byte{resendHeldOnly}},
		{msgResend, nil},
		{msgTally, appendTally(nil, tallyBody{seq: 1, width: 1e6, first: t0.UnixMicro(), counts: []uint64{1, 2}})},
		{msgRevokeIDs, appendRevokedIDs(nil, []revokedID{{id: session.ID{5}, until: time.Now().Add(time.Hour)}})},
		{msgMark, appendMark(nil, markBody{t0: 1, server: "X"})},
		{msgKeys, []byte{1}},
		{valRecord, []byte("x")},
	} {
		f.Add(uint8(s.typ), uint32(0), s.body)
		f.Add(uint8(s.typ), uint32(3600), s.body)
	}
	f.Fuzz(func(t *testing.T, typ uint8, agoSec uint32, body []byte) {
		ago := time.Duration(agoSec%86400) * time.Second
		hdr := header{typ: envType(typ), time: time.Now().Add(-ago), sender: x.instance, farm: x.cfg.Farm}
		msg := x.keys.seal(nil, hdr, body, nil)
		received := b.ctr.received.Load()
		var rejected uint64
		for i := range numRejections {
			rejected += b.ctr.rejected[i].Load()
		}
		b.receive(msg)
		var after uint64
		for i := range numRejections {
			after += b.ctr.rejected[i].Load()
		}
		if got := b.ctr.received.Load() - received; got != 1 {
			t.Fatalf("one message counted received %d times", got)
		}
		if after-rejected > 1 {
			t.Fatalf("one message counted rejected %d times", after-rejected)
		}
	})
}
