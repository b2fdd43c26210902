package farm

import (
	"bytes"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestReceiveRevokedIDs: a peer's revocation by ID (msgRevokeIDs) revokes
// the chain of a session the node holds under that ID, cached or kept
// undecoded (LazyPeers), and is kept, so that a peer's copy of the session
// that comes later is refused too; a message that is forged, tampered
// with, sealed for another farm, or whose body does not decode is dropped
// (counted by reason) and changes nothing, as does one whose ID lapsed.
func TestReceiveRevokedIDs(t *testing.T) {
	const grace = 30 * time.Second
	for _, tc := range []struct {
		name   string
		lazy   bool
		later  bool // the session comes from a peer after the revocation
		until  time.Duration
		body   func(b []byte) []byte // changes the body before it is sealed
		forge  bool                  // sealed under another secret
		tamper func([]byte)          // changes the sealed message
		gone   bool
		reason string // the rejection counted, if any
	}{
		{name: "held", until: time.Hour, gone: true},
		{name: "held lazily", lazy: true, until: time.Hour, gone: true},
		{name: "comes later from a peer", later: true, until: time.Hour, gone: true},
		{name: "lapsed", until: -time.Second},
		{name: "forged", until: time.Hour, forge: true, reason: "seal"},
		{name: "body changed", until: time.Hour, tamper: func(m []byte) { m[len(m)-20] ^= 1 }, reason: "seal"},
		{name: "type changed to a revocation", until: time.Hour, tamper: func(m []byte) { m[3] = byte(msgRevoke) }, reason: "seal"},
		{name: "body too short", until: time.Hour, body: func(b []byte) []byte { return b[:len(b)-1] }, reason: "body"},
		{name: "body empty", until: time.Hour, body: func([]byte) []byte { return nil }, reason: "body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recv, send := oldMsgNodes(t, tc.lazy, grace)
			now := time.Now()
			id := send.cfg.Cache.NewID()
			const chain = 42
			rec := session.Record{State: []byte("state"), ServerName: "localhost", Expires: now.Add(50 * time.Minute), Chain: chain, ChainStart: now.Add(-time.Minute)}
			sessions, err := appendSessions(nil, []sessionItem{{id: id, rec: rec}})
			if err != nil {
				t.Fatal(err)
			}
			fromPeer := func() {
				recv.receive(send.keys.seal(nil, header{typ: msgSessions, time: time.Now(), sender: send.instance, farm: send.cfg.Farm}, sessions, nil))
			}
			if !tc.later {
				fromPeer()
			}

			body := appendRevokedIDs(nil, []revokedID{{id: id, until: now.Add(tc.until)}})
			if tc.body != nil {
				body = tc.body(body)
			}
			keys := send.keys
			if tc.forge {
				keys = testKeyring(t, send.cfg.Farm, NewSecret(1))
			}
			msg := keys.seal(nil, header{typ: msgRevokeIDs, time: now, sender: send.instance, farm: send.cfg.Farm}, body, nil)
			if tc.tamper != nil {
				tc.tamper(msg)
			}
			recv.receive(msg)
			if tc.later {
				fromPeer()
			}

			held := false
			if tc.lazy {
				recv.pend.mu.Lock()
				_, held = recv.pend.m[id]
				recv.pend.mu.Unlock()
			}
			if _, ok := recv.cfg.Cache.GetBuffer(id, nil); ok {
				held = true
			}
			if held == tc.gone {
				t.Fatalf("session held: %v, want %v", held, !tc.gone)
			}
			if tc.gone {
				if !recv.cfg.Cache.Revoked(chain) {
					t.Error("the session's chain is not revoked")
				}
				if recv.revocationDone(chain) == nil && recv.revs.applied == 0 {
					t.Error("the chain's revocation was not queued for the farm")
				}
			}
			s := recv.Metrics()
			for _, r := range []string{"too_old", "seal", "body", "type"} {
				want := uint64(0)
				if r == tc.reason {
					want = 1
				}
				if got := counter(s, "tlsfarm_farm_rejected_total", "reason", r); got != want {
					t.Errorf("rejected_total{reason=%q} = %d, want %d", r, got, want)
				}
			}
			wantKept := 0
			if tc.reason == "" && tc.until > 0 {
				wantKept = 1
			}
			if got := recv.rids.len(); got != wantKept {
				t.Errorf("%d IDs kept, want %d", got, wantKept)
			}
		})
	}
}

// TestRecordedIDsBounded: a node keeps at most maxRecordedIDs revocations
// by ID; past it, the one that lapses first makes room, and the latest
// are kept.
func TestRecordedIDsBounded(t *testing.T) {
	var r recordedIDs
	now := time.Now()
	rs := make([]revokedID, maxRecordedIDs+10)
	for i := range rs {
		rs[i].id[0], rs[i].id[1], rs[i].id[2] = byte(i), byte(i>>8), byte(i>>16)
		rs[i].until = now.Add(time.Hour + time.Duration(i)*time.Second)
	}
	if fresh := r.add(rs, now); len(fresh) != len(rs) {
		t.Fatalf("%d fresh of %d", len(fresh), len(rs))
	}
	if got := r.len(); got != maxRecordedIDs {
		t.Fatalf("%d IDs kept, want the bound %d", got, maxRecordedIDs)
	}
	for i, x := range rs {
		if want := i >= 10; r.has(x.id, now) != want {
			t.Fatalf("ID %d kept: %v, want %v", i, !want, want)
		}
	}
	if r.has(rs[len(rs)-1].id, now.Add(2*time.Hour+maxRecordedIDs*time.Second)) {
		t.Error("a lapsed ID still counts")
	}
}

// FuzzRevokedIDs checks the decoder of revocations by ID (msgRevokeIDs
// bodies, and the store's valRevokedID members) on arbitrary input: no
// panic, and an accepted body re-encodes identically; and that a message
// of that type opens only if it was sealed under the farm's key.
func FuzzRevokedIDs(f *testing.F) {
	k := testKeyring(f, "f1")
	now := time.Unix(1_700_000_000, 0)
	body := appendRevokedIDs(nil, []revokedID{{id: session.ID{1, 2, 3}, until: now.Add(time.Hour)}, {id: session.ID{9}, until: now}})
	f.Add(body)
	f.Add(body[:revokedIDLen+3])
	msg := k.seal(nil, header{typ: msgRevokeIDs, time: now, sender: 1, farm: "f1"}, body, nil)
	f.Add(msg)
	f.Fuzz(func(t *testing.T, b []byte) {
		if rs, err := parseRevokedIDs(b); err == nil {
			if again := appendRevokedIDs(nil, rs); !bytes.Equal(again, b) {
				t.Fatalf("revoked IDs round trip: %x -> %x", b, again)
			}
			if len(rs) == 0 {
				t.Fatal("an empty body was accepted")
			}
		}
		if _, got, err := k.open(b, "f1", msgRevokeIDs, nil, now, time.Hour, time.Hour); err == nil && !bytes.Equal(got, body) {
			t.Fatalf("a message that was never sealed opened: %x -> %x", b, got)
		}
	})
}
