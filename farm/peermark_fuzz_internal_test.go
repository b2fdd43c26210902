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
