package farm

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

func testKeyring(t testing.TB, farm string, secrets ...Secret) *farmKeys {
	t.Helper()
	if len(secrets) == 0 {
		secrets = []Secret{{ID: 1, Bytes: bytes.Repeat([]byte{7}, 32)}}
	}
	k, err := deriveFarmKeys(farm, secrets)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestEnvelopeRoundTrip(t *testing.T) {
	k := testKeyring(t, "f1")
	now := time.Now()
	h := header{typ: msgRevoke, time: now, sender: 42, farm: "f1"}
	body := appendRevocations(nil, []revocation{{chain: 9, until: now.Add(time.Hour)}})
	msg := k.seal(nil, h, body, nil)
	got, gotBody, err := k.open(msg, "f1", msgRevoke, nil, now, time.Minute, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got.sender != 42 || got.typ != msgRevoke || got.time.UnixMicro() != now.UnixMicro() || !bytes.Equal(gotBody, body) {
		t.Fatalf("opened %+v %x", got, gotBody)
	}
	if bytes.Contains(msg, body) {
		t.Fatal("body travels in the clear")
	}
}

func TestEnvelopeRejections(t *testing.T) {
	k := testKeyring(t, "f1")
	now := time.Now()
	seal := func(h header, body, ctx []byte) []byte { return k.seal(nil, h, body, ctx) }
	good := header{typ: msgSessions, time: now, sender: 1, farm: "f1"}
	msg := seal(good, []byte("body"), nil)
	flip := func(i int) []byte { m := bytes.Clone(msg); m[i] ^= 1; return m }
	other := testKeyring(t, "f1", Secret{ID: 1, Bytes: bytes.Repeat([]byte{8}, 32)})
	tests := []struct {
		name string
		msg  []byte
		want rejectReason
		ctx  []byte
	}{
		{"empty", nil, rejectMalformed, nil},
		{"garbage", []byte("hello, farm"), rejectMalformed, nil},
		{"truncated tag", msg[:len(msg)-1], rejectSeal, nil},
		{"no ciphertext", msg[:len(msg)-20], rejectMalformed, nil},
		{"header only", msg[:fixedHeaderLen+2], rejectMalformed, nil},
		{"version", flip(2), rejectVersion, nil},
		{"tampered type", flip(3), rejectSeal, nil},
		{"unknown key", flip(4), rejectSeal, nil},
		{"tampered time", flip(12), rejectSeal, nil},
		{"tampered sender", flip(20), rejectSeal, nil},
		{"tampered body", flip(len(msg) - 20), rejectSeal, nil},
		{"tampered tag", flip(len(msg) - 1), rejectSeal, nil},
		{"other farm", seal(header{typ: msgSessions, time: now, sender: 1, farm: "f2"}, []byte("b"), nil), rejectOtherFarm, nil},
		{"other secret", other.seal(nil, good, []byte("b"), nil), rejectSeal, nil},
		{"too old", seal(header{typ: msgSessions, time: now.Add(-2 * time.Minute), sender: 1, farm: "f1"}, []byte("b"), nil), rejectTooOld, nil},
		{"future", seal(header{typ: msgSessions, time: now.Add(time.Minute), sender: 1, farm: "f1"}, []byte("b"), nil), rejectFuture, nil},
		{"wrong context", seal(good, []byte("b"), []byte("id-1")), rejectSeal, []byte("id-2")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := k.open(tc.msg, "f1", 0, tc.ctx, now, time.Minute, 5*time.Second)
			if err == nil {
				t.Fatal("opened")
			}
			if got := rejection(err); got != tc.want {
				t.Fatalf("rejection = %v (%v), want %v", got, err, tc.want)
			}
		})
	}
	// An authentic message of another type than asked for.
	if _, _, err := k.open(msg, "f1", msgRevoke, nil, now, time.Minute, time.Second); rejection(err) != rejectType {
		t.Fatalf("type mismatch: %v", err)
	}
}

func TestSecretRotationAcceptsBoth(t *testing.T) {
	oldS := Secret{ID: 1, Bytes: bytes.Repeat([]byte{1}, 32)}
	newS := Secret{ID: 2, Bytes: bytes.Repeat([]byte{2}, 32)}
	before := testKeyring(t, "f", oldS)
	during := testKeyring(t, "f", newS, oldS)
	after := testKeyring(t, "f", newS)
	now := time.Now()
	h := header{typ: msgSessions, time: now, farm: "f"}
	fromOld := before.seal(nil, h, []byte("x"), nil)
	fromNew := during.seal(nil, h, []byte("x"), nil)
	for _, tc := range []struct {
		name string
		k    *farmKeys
		msg  []byte
		ok   bool
	}{
		{"during opens old", during, fromOld, true},
		{"before opens new", before, fromNew, false},
		{"after opens new", after, fromNew, true},
		{"after opens old", after, fromOld, false},
	} {
		if _, _, err := tc.k.open(tc.msg, "f", 0, nil, now, time.Minute, time.Second); (err == nil) != tc.ok {
			t.Errorf("%s: err = %v", tc.name, err)
		}
	}
	if during.ids[0].ID != 2 || len(during.ids) != 2 {
		t.Fatalf("ID keys during rotation = %v", during.ids)
	}
}

func TestSessionsBody(t *testing.T) {
	var items []sessionItem
	for i := range 3 {
		var id session.ID
		id[0] = byte(i)
		items = append(items, sessionItem{id: id, rec: session.Record{
			State: bytes.Repeat([]byte{byte(i)}, 10+i), ServerName: "h", Expires: time.Unix(100, 0), ChainStart: time.Unix(50, 0), Chain: uint64(i)}})
	}
	b, err := appendSessions(nil, items)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseSessions(b)
	if err != nil || len(got) != 3 {
		t.Fatalf("parse = %d items, %v", len(got), err)
	}
	for i := range got {
		if got[i].id != items[i].id || !bytes.Equal(got[i].rec.State, items[i].rec.State) || got[i].rec.Chain != items[i].rec.Chain {
			t.Fatalf("item %d = %+v", i, got[i])
		}
	}
	for _, cut := range []int{1, session.IDLen, session.IDLen + 4, len(b) - 1} {
		if _, err := parseSessions(b[:cut]); err == nil {
			t.Fatalf("truncated at %d parsed", cut)
		}
	}
}

func TestParseSecrets(t *testing.T) {
	s1, s2 := NewSecret(3), NewSecret(4)
	got, err := parseSecrets(formatSecrets(s1, s2))
	if err != nil || len(got) != 2 || got[0].ID != 3 || !bytes.Equal(got[1].Bytes, s2.Bytes) {
		t.Fatalf("parseSecrets = %v, %v", got, err)
	}
	for _, bad := range []string{
		"",
		"# only a comment\n",
		"c2hvcnQ=\n",            // 5 bytes
		"999:" + b64(32) + "\n", // ID out of range
		"1:" + b64(32) + "\n1:" + b64(32) + "\n",
		"not base64 !!!\n",
	} {
		if _, err := parseSecrets([]byte(bad)); err == nil {
			t.Errorf("parseSecrets(%q) succeeded", bad)
		}
	}
	if s := s1.String() + s1.GoString(); bytes.Contains([]byte(s), s1.Bytes) {
		t.Fatal("secret printed")
	}
}

func b64(n int) string {
	return string(formatSecrets(Secret{Bytes: make([]byte, n)})[len("# tlsfarm farm secrets: one per line, \"ID:base64\"; the first seals, all open.\n")+2:])
}

// FuzzOpen checks that no input makes the envelope decoder panic, and that
// nothing but a sealed message opens.
func FuzzOpen(f *testing.F) {
	k := testKeyring(f, "f1")
	now := time.Unix(1_700_000_000, 0)
	msg := k.seal(nil, header{typ: msgSessions, time: now, sender: 1, farm: "f1"}, []byte("body"), nil)
	f.Add(msg)
	f.Add(msg[:30])
	f.Add([]byte("tF\x01"))
	big := make([]byte, transport.MaxMessageSize+1)
	f.Fuzz(func(t *testing.T, b []byte) {
		// Only "body" was ever sealed under this key (here or in the
		// process that made the seed corpus), so nothing else may open.
		_, body, err := k.open(b, "f1", 0, nil, now, time.Hour, time.Hour)
		if err == nil && string(body) != "body" {
			t.Fatalf("a message that was never sealed opened: %x -> %x", b, body)
		}
		if len(b) > transport.MaxMessageSize && rejection(err) != rejectSize {
			t.Fatalf("a %d-byte message was not refused for its size: %v", len(b), err)
		}
		// The same bytes, padded past the bound, are refused for their
		// size, whatever they start with.
		copy(big, b)
		if _, _, err := k.open(big, "f1", 0, nil, now, time.Hour, time.Hour); rejection(err) != rejectSize {
			t.Fatalf("an oversize message was not refused for its size: %v", err)
		}
	})
}

// FuzzBodies checks the body decoders on arbitrary (authentic-looking)
// plaintext: no panic, and accepted bodies re-encode identically.
func FuzzBodies(f *testing.F) {
	b, _ := appendSessions(nil, []sessionItem{{rec: session.Record{State: []byte("s"), Expires: time.Unix(1, 0)}}})
	f.Add(b)
	f.Add(appendRevocations(nil, []revocation{{chain: 1, until: time.Unix(5, 0)}}))
	f.Add(appendTally(nil, tallyBody{seq: 3, width: 1e6, first: 1_700_000_000, counts: []uint64{4, 0, 9}}))
	f.Fuzz(func(t *testing.T, body []byte) {
		if items, err := parseSessions(body); err == nil {
			again, err := appendSessions(nil, items)
			if err != nil || !bytes.Equal(again, body) {
				t.Fatalf("sessions round trip: %x -> %x (%v)", body, again, err)
			}
		}
		if revs, err := parseRevocations(body); err == nil {
			if again := appendRevocations(nil, revs); !bytes.Equal(again, body) {
				t.Fatalf("revocations round trip: %x -> %x", body, again)
			}
		}
		if tb, err := parseTally(body); err == nil {
			if again := appendTally(nil, tb); !bytes.Equal(again, body) {
				t.Fatalf("tally round trip: %x -> %x", body, again)
			}
			if tb.width <= 0 || len(tb.counts) > tallySlots {
				t.Fatalf("tally accepted with width %d and %d counts", tb.width, len(tb.counts))
			}
		}
	})
}

// FuzzLifecycleBodies checks the decoders of cut and key-set bodies and of
// the farm secret file on arbitrary input: no panic, accepted cut bodies
// re-encode identically, and an accepted key set decodes to the same set
// again from its own encoding.
func FuzzLifecycleBodies(f *testing.F) {
	f.Add(appendCuts(nil, []cut{{id: session.ID{1}}, {id: session.ID{2}, until: time.Unix(7, 0)}}))
	ks := keySet{st: ticket.State{Epoch: 3, Current: ticket.Key{5}, Previous: []ticket.Key{{1}}}, extra: 2, until: 9}
	if b, err := ks.bytes(); err == nil {
		f.Add(b)
	}
	// The form that carries the writer's schedule, without and with
	// merged keys, and the form that also records where merged keys are.
	for _, s := range []keySet{
		{st: ks.st, interval: 12 * time.Hour, keep: 2},
		{st: ks.st, extra: 2, until: 9, interval: time.Second, keep: 1},
		{st: ks.st, extra: 2, until: 9, interval: time.Second, keep: 1, placed: true},
	} {
		if b, err := s.bytes(); err == nil {
			f.Add(b)
		}
	}
	f.Add(formatSecrets(Secret{ID: 1, Bytes: bytes.Repeat([]byte{7}, minSecretLen)}))
	f.Fuzz(func(t *testing.T, body []byte) {
		if cs, err := parseCuts(body); err == nil {
			if again := appendCuts(nil, cs); !bytes.Equal(again, body) {
				t.Fatalf("cuts round trip: %x -> %x", body, again)
			}
		}
		if k, err := parseKeySet(body); err == nil {
			b, err := k.bytes()
			if err != nil {
				t.Fatalf("parsed key set does not encode: %v", err)
			}
			k2, err := parseKeySet(b)
			if err != nil || !reflect.DeepEqual(k, k2) {
				t.Fatalf("key set round trip: %+v -> %+v (%v)", k, k2, err)
			}
		}
		if ss, err := parseSecrets(body); err == nil {
			for _, s := range ss {
				if len(s.Bytes) < minSecretLen {
					t.Fatalf("accepted a %d-byte secret", len(s.Bytes))
				}
			}
		}
	})
}
