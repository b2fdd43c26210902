package farm

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// oldMsgNodes returns a receiving node and a sending node of one farm,
// both on a silent bus (the test hands the sender's messages to the
// receiver itself), with MaxAge 1s, the cache's Lifetime 1h and its
// ResumeGrace grace.
func oldMsgNodes(t *testing.T, lazy bool, grace time.Duration) (recv, send *Node) {
	t.Helper()
	secret := NewSecret(1)
	mk := func(lazy bool) *Node {
		cache, err := session.New(&session.Config{SweepInterval: -1, Lifetime: time.Hour, ResumeGrace: grace})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cache.Close() })
		n, err := Join(context.Background(), Config{Farm: "oldmsg", Secrets: []Secret{secret}, Cache: cache, Bus: silentBus{},
			LazyPeers: lazy, MaxAge: time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	return mk(lazy), mk(false)
}

// TestOldRestrictingMessages: a retirement, a grace cut or a revocation
// older than MaxAge is applied; so is the grace cut a peer's new session
// implies for its parent (broadcast mode), though the session itself,
// older than MaxAge, is not inserted (or held, with lazy peers). A message
// older than the restricting bound (the cache's Lifetime plus MaxSkew) is
// refused before it is opened, as is any other type past MaxAge; and a
// message whose header or body was changed — a type changed to pass the
// longer bound included — fails authentication and changes nothing.
func TestOldRestrictingMessages(t *testing.T) {
	const grace = 30 * time.Second
	const bound = time.Hour + 5*time.Second // Lifetime + MaxSkew
	type outcome int
	const (
		untouched outcome = iota // the session keeps its full life
		gone                     // retired, revoked, or dropped as held
		wasCut                   // cut to the cut's time
	)
	for _, tc := range []struct {
		name   string
		lazy   bool
		age    time.Duration // how long ago the message was sealed
		typ    envType       // msgCut, msgRevoke, msgSessions (a child of the session), msgKeys
		until  time.Duration // msgCut: the cut's end after the seal (0: a retirement)
		tamper func([]byte)  // changes the sealed message
		want   outcome
		reason string // the rejection counted, if any
		old    uint64 // sessions counted as too old to insert
	}{
		{name: "retirement fresh", age: 0, typ: msgCut, want: gone},
		{name: "retirement old", age: 10 * time.Second, typ: msgCut, want: gone},
		{name: "retirement near the bound", age: bound - time.Minute, typ: msgCut, want: gone},
		{name: "cut old", age: 10 * time.Second, typ: msgCut, until: grace, want: wasCut},
		{name: "revocation old", age: 10 * time.Second, typ: msgRevoke, want: gone},
		{name: "child fresh", age: 0, typ: msgSessions, want: wasCut},
		{name: "child old: parent cut, child not inserted", age: 10 * time.Second, typ: msgSessions, want: wasCut, old: 1},
		{name: "child old past the grace: parent retired", age: 40 * time.Second, typ: msgSessions, want: gone, old: 1},
		{name: "child old, lazy: held parent dropped", lazy: true, age: 10 * time.Second, typ: msgSessions, want: gone, old: 1},
		{name: "retirement past the bound", age: bound + time.Minute, typ: msgCut, want: untouched, reason: "too_old"},
		{name: "retirement past the bound, body changed: refused unopened", age: bound + time.Minute, typ: msgCut, want: untouched, reason: "too_old",
			tamper: func(m []byte) { m[len(m)-20] ^= 1 }},
		{name: "child past the bound", age: bound + time.Minute, typ: msgSessions, want: untouched, reason: "too_old"},
		{name: "revocation past its bound", age: 25 * time.Hour, typ: msgRevoke, want: untouched, reason: "too_old"},
		{name: "key set old", age: 10 * time.Second, typ: msgKeys, want: untouched, reason: "too_old"},
		{name: "retirement old, body changed", age: 10 * time.Second, typ: msgCut, want: untouched, reason: "seal",
			tamper: func(m []byte) { m[len(m)-20] ^= 1 }},
		{name: "retirement old, time changed", age: 10 * time.Second, typ: msgCut, want: untouched, reason: "seal",
			tamper: func(m []byte) { m[12] ^= 1 }},
		{name: "key set old, type changed to a cut", age: 10 * time.Second, typ: msgKeys, want: untouched, reason: "seal",
			tamper: func(m []byte) { m[3] = byte(msgCut) }},
		{name: "key set old, type changed to sessions", age: 10 * time.Second, typ: msgKeys, want: untouched, reason: "seal",
			tamper: func(m []byte) { m[3] = byte(msgSessions) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recv, send := oldMsgNodes(t, tc.lazy, grace)
			now := time.Now()
			sent := now.Add(-tc.age)
			id := recv.cfg.Cache.NewID()
			const chain = 42
			rec := session.Record{State: []byte("state"), ServerName: "localhost", Expires: now.Add(50 * time.Minute), Chain: chain, ChainStart: now.Add(-time.Minute)}
			if tc.lazy {
				b, err := rec.AppendBinary(nil)
				if err != nil {
					t.Fatal(err)
				}
				recv.pend.put(id, b)
			} else if err := recv.cfg.Cache.Insert(id, rec, session.OriginPeer); err != nil {
				t.Fatal(err)
			}

			hdr := header{typ: tc.typ, time: sent, sender: send.instance, farm: send.cfg.Farm}
			var body []byte
			child := send.cfg.Cache.NewID()
			switch tc.typ {
			case msgCut:
				c := cut{id: id}
				if tc.until > 0 {
					c.until = sent.Add(tc.until)
				}
				body = appendCuts(nil, []cut{c})
			case msgRevoke:
				body = appendRevocations(nil, []revocation{{chain: chain, until: now.Add(time.Hour)}})
			case msgSessions:
				var err error
				body, err = appendSessions(nil, []sessionItem{{id: child, rec: session.Record{
					State: []byte("child"), ServerName: "localhost", Expires: now.Add(50 * time.Minute), Chain: chain, ChainStart: now.Add(-time.Minute), Parent: id,
				}}})
				if err != nil {
					t.Fatal(err)
				}
			case msgKeys:
				body = []byte("not a key set: never opened")
			}
			msg := send.keys.seal(nil, hdr, body, nil)
			if tc.tamper != nil {
				tc.tamper(msg)
			}
			recv.receive(msg)

			held := func(id session.ID) (time.Time, bool) {
				if tc.lazy {
					recv.pend.mu.Lock()
					defer recv.pend.mu.Unlock()
					_, ok := recv.pend.m[id]
					return rec.Expires, ok
				}
				r, ok := recv.cfg.Cache.Cut(id, now.Add(24*time.Hour)) // a later cut changes nothing
				return r.Expires, ok && r.Expires.After(time.Now())
			}
			exp, ok := held(id)
			switch tc.want {
			case untouched:
				if !ok || !exp.Equal(rec.Expires) {
					t.Fatalf("session held %v until %v; want untouched, until %v", ok, exp, rec.Expires)
				}
			case gone:
				if ok {
					t.Fatalf("session still held, until %v", exp)
				}
			case wasCut:
				want := sent.Add(grace)
				if !ok || exp.Sub(want).Abs() > 100*time.Millisecond {
					t.Fatalf("session held %v until %v; want cut to %v", ok, exp, want)
				}
			}
			if tc.typ == msgSessions {
				_, childHeld := held(child)
				if wantChild := tc.old == 0 && tc.reason == ""; childHeld != wantChild {
					t.Fatalf("child held %v, want %v", childHeld, wantChild)
				}
			}
			s := recv.Metrics()
			if got := counter(s, "tlsfarm_farm_old_sessions_total"); got != tc.old {
				t.Errorf("old_sessions_total = %d, want %d", got, tc.old)
			}
			for _, r := range []string{"too_old", "seal", "body", "type"} {
				want := uint64(0)
				if r == tc.reason {
					want = 1
				}
				if got := counter(s, "tlsfarm_farm_rejected_total", "reason", r); got != want {
					t.Errorf("rejected_total{reason=%q} = %d, want %d", r, got, want)
				}
			}
		})
	}
}

// TestOldRetirementsDoNotFlushRetired: the IDs a node remembers as retired
// (so that a peer's message still carrying one does not bring it back) are
// bounded. Retirements are taken at any age up to the cache's Lifetime, so
// someone on the bus can replay many old ones (here more than the fixed
// ring of 65,536 IDs the memory once was); they must not be remembered
// (past its bound the memory refuses every peer's copy for a while), nor
// push out a retirement that still matters: the session's own message,
// replayed within MaxAge after, must not insert it again.
func TestOldRetirementsDoNotFlushRetired(t *testing.T) {
	recv, send := oldMsgNodes(t, false, 30*time.Second)
	now := time.Now()
	id := send.cfg.Cache.NewID()
	rec := session.Record{State: []byte("state"), ServerName: "localhost", Expires: now.Add(50 * time.Minute), Chain: 7, ChainStart: now}
	body, err := appendSessions(nil, []sessionItem{{id: id, rec: rec}})
	if err != nil {
		t.Fatal(err)
	}
	hdr := header{typ: msgSessions, time: now, sender: send.instance, farm: send.cfg.Farm}
	sessions := send.keys.seal(nil, hdr, body, nil)
	recv.receive(bytesClone(sessions))
	if _, ok := recv.cfg.Cache.Cut(id, now.Add(time.Hour)); !ok {
		t.Fatal("the peer's session was not inserted")
	}
	hdr.typ = msgCut
	recv.receive(send.keys.seal(nil, hdr, appendCuts(nil, []cut{{id: id}}), nil))
	if _, ok := recv.cfg.Cache.Cut(id, now.Add(time.Hour)); ok {
		t.Fatal("the retirement did not remove the session")
	}
	// Replays of retirements of other sessions, sealed ten minutes ago.
	hdr.time = now.Add(-10 * time.Minute)
	var cs []cut
	for range 1<<16 + 1 {
		cs = append(cs, cut{id: send.cfg.Cache.NewID()})
		if len(cs) == 4096 {
			recv.receive(send.keys.seal(nil, hdr, appendCuts(nil, cs), nil))
			cs = cs[:0]
		}
	}
	recv.receive(send.keys.seal(nil, hdr, appendCuts(nil, cs), nil))
	recv.receive(sessions) // the session's message, replayed
	if _, ok := recv.cfg.Cache.Cut(id, now.Add(time.Hour)); ok {
		t.Fatal("a replayed message brought a retired session back after old retirements were replayed")
	}
	if got := recv.retired.len(); got != 1 {
		t.Errorf("the node remembers %d retired IDs, want 1: old retirements of sessions it did not hold were remembered", got)
	}
}

func bytesClone(b []byte) []byte { return append([]byte(nil), b...) }
