package farm

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzParseMark checks the decoder of msgMark bodies (a peer's per-server
// mark, opened from the bus) on arbitrary input: no panic; what it accepts
// holds at most maxMarkPeers answers of markAnswerLen bytes each, a
// server name no longer than one length byte gives, and re-encodes to
// the same bytes.
func FuzzParseMark(f *testing.F) {
	f.Add(appendMark(nil, markBody{flags: 1, t0: 42, server: "nats-a"}))
	f.Add(appendMark(nil, markBody{t0: 1 << 40, server: "redis-1:6379", answers: []markAnswer{{to: 7, t0: 9}, {to: 1 << 63, t0: 1}}}))
	f.Add(appendMark(nil, markBody{}))
	many := make([]markAnswer, maxMarkPeers)
	for i := range many {
		many[i] = markAnswer{to: uint64(i), t0: uint64(i) + 1}
	}
	f.Add(appendMark(nil, markBody{server: "s", answers: many}))
	f.Fuzz(func(t *testing.T, body []byte) {
		m, answers, err := parseMark(body)
		if err != nil {
			if m.server != "" || m.t0 != 0 || answers != nil {
				t.Fatalf("a refused body gave %+v and %d answer bytes", m, len(answers))
			}
			return
		}
		if len(answers)%markAnswerLen != 0 || len(answers)/markAnswerLen > maxMarkPeers || len(m.server) > 255 {
			t.Fatalf("accepted %d answer bytes and a %d-byte server name", len(answers), len(m.server))
		}
		if len(body) != markFixedLen+len(m.server)+len(answers) {
			t.Fatalf("accepted a %d-byte body that holds %d bytes", len(body), markFixedLen+len(m.server)+len(answers))
		}
		for i := 0; i < len(answers); i += markAnswerLen {
			a := answers[i : i+markAnswerLen]
			m.answers = append(m.answers, markAnswer{to: binary.BigEndian.Uint64(a), t0: binary.BigEndian.Uint64(a[8:])})
		}
		if again := appendMark(nil, m); !bytes.Equal(again, body) {
			t.Fatalf("mark round trip: %x -> %x", body, again)
		}
	})
}

// FuzzReceiveMark feeds msgMarks from a peer on server X, sealed under the
// farm's key, to a node on server Y: a body given whole, or one built with
// an answer to the node carrying any t0. Nothing panics; a body parseMark
// refuses is counted rejected and changes nothing; and the node's floor is
// never past its own clock (a t0 the node never sent does not move it):
// at most now, or noPeers.
func FuzzReceiveMark(f *testing.F) {
	secret := NewSecret(1)
	b, x := markNode(f, secret, "Y"), markNode(f, secret, "X")
	b.pm.nextMark(0, "Y")
	f.Add(false, byte(0), "X", uint64(1), []byte(nil))
	f.Add(false, byte(markLeaving), "X", uint64(1<<62), []byte(nil))
	f.Add(false, byte(0), "Y", uint64(1), []byte(nil))
	f.Add(true, byte(0), "", uint64(0), appendMark(nil, markBody{t0: 5, server: "X", answers: []markAnswer{{to: 1, t0: 2}}}))
	f.Add(true, byte(0), "", uint64(0), []byte{0, 1, 2})
	f.Fuzz(func(t *testing.T, whole bool, flags byte, server string, t0 uint64, raw []byte) {
		body := raw
		if !whole {
			if len(server) > 255 {
				server = server[:255]
			}
			body = appendMark(nil, markBody{flags: flags, t0: 1, server: server, answers: []markAnswer{{to: b.instance, t0: t0}, {to: b.instance + 1, t0: t0}}})
		}
		_, _, perr := parseMark(body)
		received, rejected := b.pm.received.Load(), b.ctr.rejected[rejectBody].Load()
		hdr := header{typ: msgMark, time: x.cfg.Now(), sender: x.instance, farm: x.cfg.Farm}
		b.receive(x.keys.seal(nil, hdr, body, nil))
		gotReceived, gotRejected := b.pm.received.Load()-received, b.ctr.rejected[rejectBody].Load()-rejected
		if perr == nil && (gotReceived != 1 || gotRejected != 0) || perr != nil && (gotReceived != 0 || gotRejected != 1) {
			t.Fatalf("parseMark error %v, yet received +%d, rejected +%d", perr, gotReceived, gotRejected)
		}
		if fl := b.pm.floor.Load(); fl != noPeers && (fl < 0 || uint64(fl) > b.pm.now()) {
			t.Fatalf("floor %d past the node's clock %d", fl, b.pm.now())
		}
		b.pm.mu.Lock()
		n := len(b.pm.peers)
		b.pm.mu.Unlock()
		if n > maxMarkPeers {
			t.Fatalf("%d peers tracked", n)
		}
	})
}
