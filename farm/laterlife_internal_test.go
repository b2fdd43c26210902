package farm

import (
	"context"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

func lifeID(i int) session.ID {
	var id session.ID
	id[0], id[1], id[2] = byte(i), byte(i>>8), 0xfe
	return id
}

// TestLaterLifeBound: the lifecycle backlog keeps one item per session (a
// retirement over a cut, the earlier of two cuts), drops what expired
// without counting it, and when full drops the items that expire soonest,
// counted.
func TestLaterLifeBound(t *testing.T) {
	now := time.Now()
	l := newLaterLife(8)
	id := lifeID(0)
	l.push([]item{
		{id: id, op: opCut, until: now.Add(3 * time.Second), expires: now.Add(time.Hour)},
		{id: id, op: opCut, until: now.Add(5 * time.Second), expires: now.Add(time.Hour)}, // later cut: ignored
		{id: lifeID(1), op: opRetire, expires: now.Add(-time.Second)},                     // expired: not kept
	}, now)
	if n, d := l.stats(); n != 1 || d != 0 {
		t.Fatalf("%d kept, %d dropped; want 1, 0", n, d)
	}
	l.push([]item{{id: id, op: opRetire, expires: now.Add(time.Hour)}}, now)
	l.push([]item{{id: id, op: opCut, until: now.Add(time.Second), expires: now.Add(time.Hour)}}, now) // after a retirement: ignored
	got := l.pop(nil, 10, now)
	if len(got) != 1 || got[0].op != opRetire {
		t.Fatalf("popped %+v, want the retirement alone", got)
	}
	l.push([]item{{id: id, op: opCut, until: now.Add(3 * time.Second), expires: now.Add(time.Hour)}}, now)
	l.push([]item{{id: id, op: opCut, until: now.Add(2 * time.Second), expires: now.Add(time.Hour)}}, now)
	if got := l.pop(nil, 10, now); len(got) != 1 || !got[0].until.Equal(now.Add(2*time.Second)) {
		t.Fatalf("popped %+v, want the earlier cut", got)
	}

	// Full: 8 items expiring in 1..8 minutes, then 4 more that expire
	// later. The soonest go, counted; nothing expired is counted.
	var its []item
	for i := range 12 {
		its = append(its, item{id: lifeID(10 + i), op: opRetire, expires: now.Add(time.Duration(i+1) * time.Minute)})
	}
	l.push(its, now)
	n, d := l.stats()
	if n > 8 || d == 0 || uint64(n)+d != 12 {
		t.Fatalf("%d kept, %d dropped of 12 into 8 slots", n, d)
	}
	kept := map[session.ID]bool{}
	for _, it := range l.pop(nil, 100, now) {
		kept[it.id] = true
	}
	if !kept[lifeID(21)] || kept[lifeID(10)] {
		t.Fatalf("kept %v: want the latest to expire kept, the soonest dropped", kept)
	}

	// Items that expired while kept are not handed back, nor counted.
	l.push([]item{{id: lifeID(40), op: opRetire, expires: now.Add(time.Second)}}, now)
	if got := l.pop(nil, 10, now.Add(2*time.Second)); len(got) != 0 {
		t.Fatalf("an expired item handed back: %+v", got)
	}
	if _, d2 := l.stats(); d2 != d || l.len() != 0 {
		t.Fatalf("dropped %d, want %d; %d left", d2, d, l.len())
	}
}

// TestKeepLifecycle: a failed batch's retirements and cuts are kept until
// their sessions' records would expire (the ID's issue time plus the
// cache's Lifetime, when the event did not say); a cut's record is carried,
// and written as cut once the cache no longer holds it; a cut written past
// its grace deletes the record; a new session back from the backlog that
// was retired meanwhile is left out, and one that was cut is written cut.
func TestKeepLifecycle(t *testing.T) {
	cache, err := session.New(&session.Config{ResumeGrace: 30 * time.Second, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	k := testKeyring(t, "f1")
	if err := cache.SetIDKeys(k.ids...); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	n := &Node{cfg: Config{Farm: "f1", Cache: cache, Mode: Broadcast, Records: nil, Now: time.Now, MaxAge: time.Minute},
		keys: k, backlog: newBacklog(16), lifeq: newLaterLife(16), kids: make(chan item, 4),
		retired: newIDMemory(maxRetired, time.Minute)}
	parent, gone, fresh, cut := cache.NewID(), cache.NewID(), cache.NewID(), cache.NewID()
	for _, id := range []session.ID{parent, fresh, cut} {
		if err := cache.Insert(id, session.Record{State: []byte("p"), Expires: now.Add(time.Hour)}, session.OriginPeer); err != nil {
			t.Fatal(err)
		}
	}
	until := now.Add(30 * time.Second)
	batch := []item{
		{id: parent, op: opCut, until: until},
		{id: gone, op: opRetire, expires: now.Add(10 * time.Minute)},
		{id: fresh, rec: session.Record{State: []byte("f"), Expires: now.Add(time.Hour)}},
	}
	// Without a store, a broadcast cut has no part to keep.
	n.keepLifecycle(n.lifeq, batch)
	if l := n.lifeq.len(); l != 1 {
		t.Fatalf("kept %d without a store in broadcast mode, want the retirement only", l)
	}
	n.lifeq.pop(nil, 10, now)

	n.cfg.Records = nopRecords{}
	hdr := header{time: now, farm: "f1"}
	puts, _, _ := n.storeItems(hdr, batch, now)
	if len(puts) != 3 || !puts[1].Retire || batch[0].rec.Expires.IsZero() {
		t.Fatalf("puts %d, carried %v; want the cut parent, the retirement and the new session, the cut record carried", len(puts), batch[0].rec.Expires)
	}
	n.keepLifecycle(n.lifeq, batch)
	kept := n.lifeq.pop(nil, 10, now)
	if len(kept) != 2 {
		t.Fatalf("kept %d items, want the cut and the retirement", len(kept))
	}
	for _, it := range kept {
		switch it.id {
		case gone:
			if !it.expires.Equal(now.Add(10 * time.Minute)) {
				t.Fatalf("retirement kept until %v, want the event's expiry", it.expires)
			}
		case parent:
			at, _ := cache.IssuedAt(parent)
			if want := at.Add(time.Hour + time.Second); !it.expires.Equal(want) {
				t.Fatalf("cut kept until %v, want %v (issue time plus Lifetime)", it.expires, want)
			}
		}
	}

	// The cache lets the parent go: the carried record is written, cut.
	cache.Retire(parent, session.OriginPeer)
	cutItem := item{id: parent, op: opCut, until: until, rec: batch[0].rec}
	puts, dels, _ := n.storeItems(hdr, []item{cutItem}, now)
	if len(puts) != 1 || len(dels) != 0 || puts[0].Key != sessionKey(parent) || puts[0].TTL > 31*time.Second {
		t.Fatalf("puts %v dels %v, want the carried parent for its grace", puts, dels)
	}
	// Written after its grace: the record goes, retired (with a mark
	// for a late write to honour).
	late := now.Add(time.Minute)
	puts, dels, _ = n.storeItems(hdr, []item{cutItem}, late)
	if len(puts) != 1 || len(dels) != 0 || puts[0].Key != sessionKey(parent) || !puts[0].Retire || puts[0].TTL <= 0 {
		t.Fatalf("puts %v dels %v, want the parent retired past its grace", puts, dels)
	}

	// Back from the backlog: retired meanwhile, or cut meanwhile.
	n.retired.add(fresh, now)
	cache.Cut(cut, until)
	back := []item{
		{id: fresh, rec: session.Record{State: []byte("f"), Expires: now.Add(time.Hour)}, later: true},
		{id: cut, rec: session.Record{State: []byte("p"), Expires: now.Add(time.Hour)}, later: true},
	}
	n.refreshLater(back)
	if back[0].op != opDropped || back[1].op != opNew || back[1].rec.Expires.After(until) {
		t.Fatalf("refreshed %v %v (expires %v), want the retired one dropped, the other cut", back[0].op, back[1].op, back[1].rec.Expires)
	}
}

// nopRecords is a RecordStore that stores nothing.
type nopRecords struct{}

func (nopRecords) PutRecords(context.Context, ...transport.Item) error { return nil }
func (nopRecords) GetRecord(context.Context, string) ([]byte, error) {
	return nil, transport.ErrNotFound
}
func (nopRecords) DeleteRecords(context.Context, ...string) error { return nil }
