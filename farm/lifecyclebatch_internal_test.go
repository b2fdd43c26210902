package farm

import (
	"encoding/hex"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestCutsSplitWithinLimit: retirements and grace cuts go out as msgCut
// messages split by the bus's size limit like sessions and revocations;
// cuts only in store-only mode (broadcast peers cut the parent when they
// insert its child), retirements in both.
func TestCutsSplitWithinLimit(t *testing.T) {
	const limit = 4 << 10
	now := time.Now().Truncate(time.Millisecond)
	for _, mode := range []Mode{Broadcast, StoreOnly} {
		k := testKeyring(t, "f1")
		n := &Node{cfg: Config{Farm: "f1", Bus: limitedBus{limit}, Mode: mode}, keys: k}
		var batch []item
		wantRetire, wantCut := map[session.ID]bool{}, map[session.ID]time.Time{}
		for i := range 600 {
			var id session.ID
			id[0], id[1] = byte(i), byte(i>>8)
			switch i % 3 {
			case 0:
				batch = append(batch, item{id: id, op: opRetire})
				wantRetire[id] = true
			case 1:
				until := now.Add(time.Duration(i) * time.Second)
				batch = append(batch, item{id: id, op: opCut, until: until})
				if mode == StoreOnly {
					wantCut[id] = until
				}
			case 2:
				batch = append(batch, item{id: id, op: opRestore, rec: session.Record{State: []byte("s"), Expires: now.Add(time.Hour)}})
			}
		}
		msgs, news, revs := n.busMessages(header{time: now, sender: 1, farm: "f1"}, batch)
		if news != 0 || revs != 0 {
			t.Fatalf("%v: lifecycle items counted as %d sessions, %d revocations", mode, news, revs)
		}
		if min := (len(wantRetire) + len(wantCut)) * cutLen / limit; len(msgs) < min {
			t.Fatalf("%v: %d messages, want at least %d", mode, len(msgs), min)
		}
		for _, m := range msgs {
			if len(m) > limit-transportReserve {
				t.Fatalf("%v: a message of %d bytes; the transport takes %d", mode, len(m), limit)
			}
			h, body, err := k.open(m, "f1", 0, nil, now, time.Minute, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if h.typ != msgCut {
				t.Fatalf("%v: a %v message from lifecycle items only", mode, h.typ)
			}
			cs, err := parseCuts(body)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range cs {
				if c.until.IsZero() {
					if !wantRetire[c.id] {
						t.Fatalf("%v: unexpected retirement", mode)
					}
					delete(wantRetire, c.id)
					continue
				}
				if u, ok := wantCut[c.id]; !ok || !u.Equal(c.until) {
					t.Fatalf("%v: unexpected cut to %v", mode, c.until)
				}
				delete(wantCut, c.id)
			}
		}
		if len(wantRetire) != 0 || len(wantCut) != 0 {
			t.Fatalf("%v: %d retirements and %d cuts missing", mode, len(wantRetire), len(wantCut))
		}
	}
}

// TestStoreItemsLifecycle: the store's part of a batch deletes retired
// sessions, rewrites a cut parent with its cut lifetime, records (store
// only) the first child in the batch and hands a second one to the
// childKeeper, leaves released claims to restoreAll, and keeps an
// unencodable session out of the backlog.
func TestStoreItemsLifecycle(t *testing.T) {
	cache, err := session.New(&session.Config{ResumeGrace: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	now := time.Now()
	n := &Node{cfg: Config{Farm: "f1", Cache: cache, Mode: StoreOnly, QueueSize: 16, Now: time.Now}, keys: testKeyring(t, "f1"), backlog: newBacklog(16), kids: make(chan item, 4)}
	parent := cache.NewID()
	if err := cache.Insert(parent, session.Record{State: []byte("p"), Expires: now.Add(time.Hour)}, session.OriginPeer); err != nil {
		t.Fatal(err)
	}
	until := now.Add(30 * time.Second)
	cache.Cut(parent, until)
	retired, taken, restored, fresh, bad := cache.NewID(), cache.NewID(), cache.NewID(), cache.NewID(), cache.NewID()
	batch := []item{
		{id: retired, op: opRetire},
		{id: taken, op: opRetire, taken: true},
		{id: parent, op: opCut, until: until, child: fresh},
		{id: restored, op: opRestore, rec: session.Record{State: []byte("r"), Expires: now.Add(time.Hour)}},
		{id: fresh, rec: session.Record{State: []byte("f"), Expires: now.Add(time.Hour)}},
		{id: bad, rec: session.Record{State: []byte("b"), Expires: now.Add(time.Hour), ServerName: string(make([]byte, 300))}},
	}
	puts, dels, revs := n.storeItems(header{time: now, farm: "f1"}, batch, now)
	if len(dels) != 0 || len(revs) != 0 {
		t.Fatalf("dels %v revs %v, want none", dels, revs)
	}
	got := map[string]time.Duration{}
	for _, p := range puts {
		got[p.Key] = p.TTL
		if p.Retire != (p.Key == sessionKey(retired) || p.Key == sessionKey(taken)) || p.Taken != (p.Key == sessionKey(taken)) {
			t.Fatalf("put of %s: Retire %v, Taken %v", p.Key, p.Retire, p.Taken)
		}
	}
	link := childKeyPrefix + hex.EncodeToString(parent[:])
	if len(puts) != 5 || got[sessionKey(fresh)] == 0 || got[link] == 0 || got[sessionKey(retired)] <= 0 || got[sessionKey(taken)] <= 0 {
		t.Fatalf("puts %v, want the new session, the cut parent, its child link, the retirement and the taken session's retirement (with their marks' TTLs)", got)
	}
	if ttl := got[sessionKey(parent)]; ttl <= 0 || ttl > 31*time.Second {
		t.Fatalf("cut parent stored for %v, want its grace (30s)", ttl)
	}
	if !hasOp(batch, opRestore) || hasOp(batch[:2], opRestore) {
		t.Fatal("hasOp")
	}
	select {
	case <-n.kids:
		t.Fatal("a first resumption went to the childKeeper")
	default:
	}
	// The parent resumed again: the childKeeper swaps the child.
	n.storeItems(header{time: now, farm: "f1"}, []item{{id: parent, op: opCut, until: until, child: cache.NewID()}}, now)
	select {
	case it := <-n.kids:
		if it.id != parent {
			t.Fatal("wrong child link handed to the childKeeper")
		}
	default:
		t.Fatal("a second store-only resumption not handed to the childKeeper")
	}
	n.keepForLater(batch)
	if l, _ := n.backlog.stats(); l != 1 {
		t.Fatalf("backlog holds %d items, want only the encodable new session", l)
	}
}

// TestEnqueueRoutesLifecycle: with a separate store path, each item goes to
// the queue of each path that has a part in it.
func TestEnqueueRoutesLifecycle(t *testing.T) {
	for _, tt := range []struct {
		mode      Mode
		it        item
		bus, srec bool
	}{
		{Broadcast, item{}, true, true},
		{StoreOnly, item{}, false, true},
		{StoreOnly, item{rev: &revocation{chain: 1}}, true, true},
		{Broadcast, item{op: opRetire}, true, true},
		{StoreOnly, item{op: opRetire}, true, true},
		{Broadcast, item{op: opCut}, false, true},
		{StoreOnly, item{op: opCut}, true, true},
		{Broadcast, item{op: opRestore}, false, true},
		{StoreOnly, item{op: opRestore}, false, true},
	} {
		n := &Node{cfg: Config{Mode: tt.mode}, q: newQueue(4), sq: newQueue(4)}
		n.enqueue(tt.it)
		if q, _ := n.q.stats(); (q == 1) != tt.bus {
			t.Errorf("%v op %d rev %v: on the bus queue: %v, want %v", tt.mode, tt.it.op, tt.it.rev != nil, q == 1, tt.bus)
		}
		if q, _ := n.sq.stats(); (q == 1) != tt.srec {
			t.Errorf("%v op %d: on the store queue: %v, want %v", tt.mode, tt.it.op, q == 1, tt.srec)
		}
	}
}
