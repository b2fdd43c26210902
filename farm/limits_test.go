package farm

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// limitedBus is a Bus that announces a message size limit; the tests here
// only encode batches for it.
type limitedBus struct{ limit int }

func (limitedBus) Publish(context.Context, ...[]byte) error { return errors.New("not used") }
func (limitedBus) Subscribe(ctx context.Context, _ func([]byte), _ func(bool, error)) error {
	<-ctx.Done()
	return ctx.Err()
}
func (b limitedBus) MaxMessageSize() int { return b.limit }

func TestOversizeEnvelopeRefusedBeforeAllocation(t *testing.T) {
	k := testKeyring(t, "f1")
	now := time.Now()
	msg := k.seal(nil, header{typ: msgSessions, time: now, sender: 1, farm: "f1"}, make([]byte, 100), nil)
	big := append(msg, make([]byte, transport.MaxMessageSize)...)
	var err error
	allocs := testing.AllocsPerRun(100, func() {
		_, _, err = k.open(big, "f1", 0, nil, now, time.Minute, time.Minute)
	})
	if rejection(err) != rejectSize {
		t.Fatalf("oversize message: %v, want a size rejection", err)
	}
	if allocs != 0 {
		t.Fatalf("refusing an oversize message allocated %v times, want 0", allocs)
	}
	// At the bound, it is a message like any other.
	if _, _, err := k.open(msg, "f1", 0, nil, now, time.Minute, time.Minute); err != nil {
		t.Fatal(err)
	}
}

// TestBatchSplitWithinLimit encodes a batch larger than the bus's limit,
// with a session whose server name no record holds and one too large for
// any message among the others: every message stays within the limit,
// every other session is in one of them, and the two are counted.
func TestBatchSplitWithinLimit(t *testing.T) {
	const limit = 16 << 10
	k := testKeyring(t, "f1")
	n := &Node{cfg: Config{Farm: "f1", Bus: limitedBus{limit}, Mode: Broadcast}, keys: k}
	now := time.Now()
	var batch []item
	want := map[session.ID]bool{}
	for i := range 100 {
		var id session.ID
		id[0], id[1] = byte(i), 1
		rec := session.Record{State: make([]byte, 2<<10), Expires: now.Add(time.Hour), ServerName: "localhost"}
		switch i {
		case 10:
			rec.ServerName = strings.Repeat("a", 300)
		case 20:
			rec.State = make([]byte, limit)
		default:
			want[id] = true
		}
		batch = append(batch, item{id: id, rec: rec})
	}
	batch = append(batch, item{rev: &revocation{chain: 7, until: now.Add(time.Hour)}})
	msgs, news, revs := n.busMessages(header{time: now, sender: 1, farm: "f1"}, batch)
	if news != 98 || revs != 1 {
		t.Fatalf("encoded %d sessions and %d revocations, want 98 and 1", news, revs)
	}
	if got := n.ctr.unencodable.Load(); got != 2 {
		t.Fatalf("unencodable sessions counted: %d, want 2", got)
	}
	if len(msgs) < 100*(2<<10)/limit {
		t.Fatalf("%d messages for %d bytes of sessions under a %d-byte limit", len(msgs), 100*(2<<10), limit)
	}
	for _, m := range msgs {
		if len(m) > limit-transportReserve {
			t.Fatalf("a message of %d bytes; the transport takes %d", len(m), limit)
		}
		h, body, err := k.open(m, "f1", 0, nil, now, time.Minute, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if h.typ != msgSessions {
			continue
		}
		items, err := parseSessions(body)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			if !want[it.id] {
				t.Fatalf("unexpected session %x", it.id[:2])
			}
			delete(want, it.id)
		}
	}
	if len(want) != 0 {
		t.Fatalf("%d sessions missing from the messages", len(want))
	}
}

// TestUnencodableSessionSkipped: a session that cannot be stored is left
// out of the store batch, and the others go.
func TestUnencodableSessionSkipped(t *testing.T) {
	n := &Node{cfg: Config{Farm: "f1", Store: nil}, keys: testKeyring(t, "f1")}
	now := time.Now()
	ok := item{rec: session.Record{State: []byte("s"), Expires: now.Add(time.Hour)}}
	bad := item{rec: session.Record{State: []byte("s"), Expires: now.Add(time.Hour), ServerName: strings.Repeat("b", 254)}}
	puts, _, _ := n.storeItems(header{time: now, farm: "f1"}, []item{ok, bad, ok}, now)
	if len(puts) != 2 {
		t.Fatalf("%d puts, want 2", len(puts))
	}
	if n.ctr.unencodable.Load() != 1 {
		t.Fatalf("unencodable counted %d, want 1", n.ctr.unencodable.Load())
	}
}

func TestNegativeCache(t *testing.T) {
	c := newNegCache(3, time.Second)
	now := time.Unix(1000, 0)
	ids := make([]session.ID, 5)
	for i := range ids {
		ids[i][0] = byte(i + 1)
	}
	c.add(ids[0], now)
	if !c.has(ids[0], now.Add(999*time.Millisecond)) {
		t.Fatal("forgot within the TTL")
	}
	if c.has(ids[0], now.Add(time.Second)) {
		t.Fatal("remembered past the TTL")
	}
	for _, id := range ids {
		c.add(id, now)
	}
	if c.len() > 3 {
		t.Fatalf("holds %d IDs, bound 3", c.len())
	}
	if c.has(ids[1], now) || !c.has(ids[4], now) {
		t.Fatal("evicted the wrong ID")
	}
	c.remove(ids[4])
	if c.has(ids[4], now) {
		t.Fatal("an inserted ID is still remembered as missing")
	}
}
