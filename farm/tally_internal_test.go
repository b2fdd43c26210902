package farm

import (
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// A simDelivery is a message a simulated sender published, as one
// receiver gets it.
type simDelivery struct {
	sealed, delivered time.Duration
	tally             *tallyBody
}

// simulate runs a sender that publishes for n tally intervals of width
// iv, over several connections: a message is sealed up to 0.3 interval
// before its publish begins; the bus takes it within half an interval,
// and the publish returns then; it is delivered up to 0.4 interval after
// (so messages, tallies included, overtake each other by up to 0.9
// interval). With fail, about one publish in twenty fails, half of those
// delivered all the same. It returns what a receiver gets, in delivery
// order, from the time from on, less the messages drop says to lose.
func simulate(r *rand.Rand, n int, iv time.Duration, fail bool, from time.Duration, drop func(sealed time.Duration) bool) []simDelivery {
	const epoch = 1_700_000_000 * time.Second
	type ev struct {
		at   time.Duration
		kind int // 0 begin, 1 end, 2 tally
		ok   bool
		msg  []byte
	}
	envelope := func(sealed time.Duration) []byte {
		b := make([]byte, 13)
		binary.BigEndian.PutUint64(b[5:], uint64((epoch+sealed)/time.Microsecond))
		return b
	}
	var evs []ev
	var out []simDelivery
	end := time.Duration(n+1) * iv
	for t := time.Duration(0); t < end; t += time.Duration(r.Int64N(int64(iv / 20))) {
		sealed := t - time.Duration(r.Int64N(int64(iv*3/10)))
		m := envelope(sealed)
		ret := t + time.Duration(r.Int64N(int64(iv/2)))
		ok := !fail || r.IntN(20) != 0
		evs = append(evs, ev{at: t, kind: 0, msg: m}, ev{at: ret, kind: 1, msg: m, ok: ok})
		if ok || r.IntN(2) == 0 {
			out = append(out, simDelivery{sealed: sealed, delivered: ret + time.Duration(r.Int64N(int64(iv*4/10)))})
		}
	}
	for k := 1; k <= n; k++ {
		evs = append(evs, ev{at: time.Duration(k)*iv + time.Duration(r.Int64N(int64(iv/10))), kind: 2})
	}
	slices.SortStableFunc(evs, func(a, b ev) int { return int(a.at - b.at) })
	snd := &tallyState{on: true, width: iv.Microseconds()}
	for _, e := range evs {
		switch e.kind {
		case 0:
			snd.begin([][]byte{e.msg})
		case 1:
			snd.end([][]byte{e.msg}, e.ok)
		case 2:
			tb := snd.nextTally(int64((epoch + e.at) / time.Microsecond))
			m := envelope(e.at)
			snd.begin([][]byte{m})
			snd.end([][]byte{m}, true)
			out = append(out, simDelivery{sealed: e.at, delivered: e.at + time.Duration(r.Int64N(int64(iv*4/10))), tally: &tb})
		}
	}
	kept := out[:0]
	for _, d := range out {
		if d.delivered < from || d.tally == nil && drop != nil && drop(d.sealed) {
			continue
		}
		kept = append(kept, d)
	}
	slices.SortStableFunc(kept, func(a, b simDelivery) int { return int(a.delivered - b.delivered) })
	return kept
}

// feed gives ds to a receiver as from sender 7, and returns the messages
// it found missing, the slots it checked, and when (simulated) it first
// found a loss, and since when.
func feed(ds []simDelivery) (lost, checks uint64, found, since time.Duration) {
	const epoch = 1_700_000_000 * time.Second
	base := time.Unix(0, 0)
	t := &tallyState{on: true}
	for _, d := range ds {
		sealed := base.Add(epoch + d.sealed)
		t.count(7, sealed, base.Add(epoch+d.delivered))
		if d.tally != nil {
			l, s := t.check(7, *d.tally, sealed)
			if l > 0 && lost == 0 {
				found, since = d.delivered, s.Sub(base)-epoch
			}
			lost += l
		}
	}
	return lost, t.checked.Load(), found, since
}

// TestTallyNoFalseLoss: messages that overtake each other, and tallies, by
// up to 0.9 of an interval, publishes that fail (some delivered all the
// same), and a receiver that subscribes at any moment (messages sealed
// before its first tally arriving after it) never make a loss.
func TestTallyNoFalseLoss(t *testing.T) {
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 1))
		iv := time.Second
		from := time.Duration(r.Int64N(int64(5 * iv)))
		lost, checks, _, _ := feed(simulate(r, 20, iv, true, from, nil))
		if lost != 0 {
			t.Fatalf("seed %d: %d messages found missing, none lost", seed, lost)
		}
		if checks < 10 {
			t.Fatalf("seed %d: %d slots checked", seed, checks)
		}
	}
}

// TestTallyFindsLoss: a message lost after the receiver's baseline is
// found, within about four intervals of its sealing, and once only.
func TestTallyFindsLoss(t *testing.T) {
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 2))
		iv := time.Second
		lostAt := time.Duration(5+r.IntN(10))*iv + time.Duration(r.Int64N(int64(iv)))
		var sealed time.Duration
		lost, _, found, since := feed(simulate(r, 20, iv, false, 0, func(s time.Duration) bool {
			if sealed == 0 && s >= lostAt {
				sealed = s
			}
			return s == sealed
		}))
		if lost != 1 {
			t.Fatalf("seed %d: %d messages found missing, want 1", seed, lost)
		}
		if since > sealed {
			t.Fatalf("seed %d: since %v, after the lost message was sealed (%v)", seed, since, sealed)
		}
		if d := found - sealed; d > 4*iv+iv/2 {
			t.Fatalf("seed %d: the loss was found %v after the message was sealed", seed, d)
		}
	}
}

// TestTallyPeers: the senders tracked are bounded (the stalest goes), a
// sender not heard from lately is forgotten, and a reset makes each
// sender's next tally a new baseline. A tally replayed, or reporting slots
// before the baseline, checks nothing.
func TestTallyPeers(t *testing.T) {
	ts := &tallyState{on: true}
	now := time.Unix(1e9, 0)
	for s := range uint64(maxTallyPeers + 10) {
		ts.count(s+1, now, now.Add(time.Duration(s)*time.Millisecond))
	}
	if len(ts.peers) != maxTallyPeers {
		t.Fatalf("%d senders tracked, want %d", len(ts.peers), maxTallyPeers)
	}
	if ts.peers[1] != nil || ts.peers[maxTallyPeers+10] == nil {
		t.Fatal("not the stalest sender was forgotten")
	}
	ts.forget(now.Add(time.Duration(maxTallyPeers) * time.Millisecond))
	if len(ts.peers) != 10 {
		t.Fatalf("%d senders left, want 10", len(ts.peers))
	}
	ts.reset()
	if len(ts.peers) != 10 {
		t.Fatalf("%d senders left after a reset, want 10", len(ts.peers))
	}
	for s, e := range ts.peers {
		if e.width != 0 || e.latest == 0 {
			t.Fatalf("sender %d after a reset: width %d (want none: a new baseline), latest %d (want kept)", s, e.width, e.latest)
		}
	}

	const w = int64(time.Second / time.Microsecond)
	slot := now.UnixMicro() / w
	at := func(s int64) time.Time { return time.UnixMicro(s*w + 10) }
	ts.count(5, at(slot), at(slot))
	if l, _ := ts.check(5, tallyBody{seq: 1, width: w}, at(slot)); l != 0 {
		t.Fatal("a baseline found a loss")
	}
	// Three messages in slot+2, the first slot checked.
	for range 3 {
		ts.count(5, at(slot+2), at(slot+2))
	}
	ts.count(5, at(slot+4), at(slot+4))
	if l, _ := ts.check(5, tallyBody{seq: 3, width: w, first: slot, counts: []uint64{9, 9, 3}}, at(slot+4)); l != 0 {
		t.Fatalf("found %d missing, none lost (slots before the baseline's next but one are not checked)", l)
	}
	if c := ts.checked.Load(); c != 1 {
		t.Fatalf("%d slots checked, want 1", c)
	}
	ts.count(5, at(slot+5), at(slot+5))
	if l, _ := ts.check(5, tallyBody{seq: 3, width: w, first: slot + 2, counts: []uint64{5}}, at(slot+5)); l != 0 {
		t.Fatal("a replayed tally was checked")
	}
	ts.count(5, at(slot+5), at(slot+5))
	l, since := ts.check(5, tallyBody{seq: 4, width: w, first: slot + 3, counts: []uint64{2, 1}}, at(slot+5))
	if l != 2 || !since.Equal(time.UnixMicro((slot+3)*w)) {
		t.Fatalf("found %d missing since %v, want 2 since the start of slot+3", l, since)
	}
}

// TestTallyLateBaseline: a baseline that reaches the receiver after
// messages the sender sealed slots later (its publish waited, theirs did
// not), before the receiver's subscription was reset or after, finds
// nothing lost, and the slots after those messages are still checked.
// Before the receiver took the latest sealing time it heard into account,
// it checked from the baseline's slot+2 on, and found the messages it
// heard before the baseline (uncounted) missing.
func TestTallyLateBaseline(t *testing.T) {
	const w = int64(time.Second / time.Microsecond)
	for _, tc := range []struct {
		name  string
		ahead int64 // the last slot, after the baseline's, of the messages heard before it
		reset bool  // the receiver's subscription is reset after those messages
	}{
		{"in time", 0, false},
		{"one slot late", 1, false},
		{"two slots late", 2, false},
		{"five slots late", 5, false},
		{"two slots late, across a reset", 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := &tallyState{on: true}
			b := time.Unix(1e9, 0).UnixMicro() / w // the baseline's slot
			at := func(s int64) time.Time { return time.UnixMicro(s*w + w/2) }
			sent := map[int64]uint64{} // the sender's counts, by slot
			heard := func(s int64, k int) {
				for range k {
					ts.count(5, at(s), at(s))
				}
				sent[s] += uint64(k)
			}
			seq := uint64(1)
			if tc.reset {
				// Baselined before, on the subscription that the
				// reset ends.
				heard(b-3, 1)
				ts.check(5, tallyBody{seq: seq, width: w}, at(b-3))
				seq++
			}
			for s := b; s <= b+tc.ahead; s++ {
				heard(s, 3)
			}
			if tc.reset {
				ts.reset()
			}
			heard(b, 1) // the baseline, sealed in slot b, heard now
			if l, _ := ts.check(5, tallyBody{seq: seq, width: w}, at(b)); l != 0 {
				t.Fatal("a baseline found a loss")
			}
			last := b + tc.ahead + 3
			for s := b + tc.ahead; s <= last; s++ {
				heard(s, 2)
			}
			tb := tallyBody{seq: seq + 1, width: w, first: b}
			for s := b; s <= last; s++ {
				tb.counts = append(tb.counts, sent[s])
			}
			heard(last+1, 1) // the tally
			before := ts.checked.Load()
			if l, since := ts.check(5, tb, at(last+1)); l != 0 {
				t.Fatalf("found %d missing since slot %+d, none lost", l, since.UnixMicro()/w-b)
			}
			// From slot b+2, and past the messages heard before
			// the baseline.
			want := last - max(b+2, b+tc.ahead+1) + 1
			if got := int64(ts.checked.Load() - before); got != want {
				t.Fatalf("%d slots checked, want %d", got, want)
			}
		})
	}
}

// BenchmarkTallyCount measures the receive path's share of the tallies:
// one message counted, from the sender of the message before (most
// messages) or from one of 8 senders in turn.
func BenchmarkTallyCount(b *testing.B) {
	for _, senders := range []uint64{1, 8} {
		b.Run("senders="+itoa(int(senders)), func(b *testing.B) {
			ts := &tallyState{on: true}
			now := time.Now()
			const w = int64(time.Second / time.Microsecond)
			for s := range senders {
				ts.count(s+1, now, now)
				ts.check(s+1, tallyBody{seq: 1, width: w}, now)
			}
			b.ResetTimer()
			for i := range b.N {
				ts.count(uint64(i)%senders+1, now, now)
			}
		})
	}
}
