package farm

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestRetiredAndResumedFollowRate: a node remembers the IDs retired and
// resumed lately for MaxAge plus MaxSkew, however many the farm retires or
// resumes meanwhile: here 100,000 of each within MaxAge, more than the
// fixed rings they once were held (65,536 IDs, about 1,900 a second over
// 35 s). A peer's copy of a session retired before the others (a re-send,
// a write-back, a delayed message, sealed before the retirement and
// arriving just within MaxAge) must not bring it back, nor a whole copy of
// a session resumed before the others undo its grace cut. Each is
// forgotten once twice MaxAge plus MaxSkew has passed.
func TestRetiredAndResumedFollowRate(t *testing.T) {
	const others = 100_000
	secret := NewSecret(1)
	start := time.Now()
	var clock atomic.Int64
	clock.Store(start.UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	set := func(t time.Time) { clock.Store(t.UnixNano()) }
	mk := func() *Node {
		cache, err := session.New(&session.Config{SweepInterval: -1, Lifetime: time.Hour, ResumeGrace: 10 * time.Second, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cache.Close() })
		n, err := Join(context.Background(), Config{Farm: "ratemem", Secrets: []Secret{secret}, Cache: cache, Bus: silentBus{},
			Now: now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	recv, send := mk(), mk()
	maxAge, ttl := recv.cfg.MaxAge, recv.cfg.MaxAge+recv.cfg.MaxSkew

	// The peer's copies, sealed at the start.
	retired, resumed := send.cfg.Cache.NewID(), send.cfg.Cache.NewID()
	rec := session.Record{State: []byte("state"), ServerName: "localhost", Expires: start.Add(50 * time.Minute), Chain: 7, ChainStart: start}
	body, err := appendSessions(nil, []sessionItem{{id: retired, rec: rec}, {id: resumed, rec: rec}})
	if err != nil {
		t.Fatal(err)
	}
	hdr := header{typ: msgSessions, time: start, sender: send.instance, farm: send.cfg.Farm}
	late := send.keys.seal(nil, hdr, body, nil)

	// retired is retired by a peer's message, resumed resumed (a peer's
	// child of it inserted here), then 100,000 others of each over
	// MaxAge less a second.
	hdr.typ = msgCut
	recv.receive(send.keys.seal(nil, hdr, appendCuts(nil, []cut{{id: retired}}), nil))
	recv.noteResumed(resumed, start.Add(time.Second), start)
	step := (maxAge - time.Second) / others
	cs := make([]cut, 0, 4096)
	for i := range others {
		at := start.Add(time.Duration(i+1) * step)
		set(at)
		recv.noteResumed(send.cfg.Cache.NewID(), at.Add(time.Second), at)
		cs = append(cs, cut{id: send.cfg.Cache.NewID()})
		if len(cs) == cap(cs) || i == others-1 {
			hdr.time = at
			recv.receive(send.keys.seal(nil, hdr, appendCuts(nil, cs), nil))
			cs = cs[:0]
		}
	}

	// The late copy comes just within MaxAge.
	set(start.Add(maxAge - 10*time.Millisecond))
	recv.receive(late)
	if _, ok := recv.cfg.Cache.Cut(retired, start.Add(time.Hour)); ok {
		t.Error("a peer's late copy brought back a session retired before 100,000 other retirements")
	}
	if _, ok := recv.cfg.Cache.Cut(resumed, start.Add(time.Hour)); ok {
		t.Error("a peer's late whole copy was taken of a session resumed before 100,000 other resumptions")
	}
	if end := start.Add(ttl - time.Millisecond); !recv.retired.has(retired, end) || !recv.wasResumed(resumed, end) {
		t.Errorf("at MaxAge plus MaxSkew less a millisecond, retired: %v, resumed: %v; want both remembered",
			recv.retired.has(retired, end), recv.wasResumed(resumed, end))
	}

	// Forgotten after twice that (a later addition rotates the
	// generations), and the memory holds no more than it must.
	set(start.Add(2*ttl + time.Second))
	recv.retired.add(send.cfg.Cache.NewID(), now())
	recv.resumed.addEnd(send.cfg.Cache.NewID(), now(), now().Add(time.Second))
	if recv.retired.has(retired, now()) || recv.wasResumed(resumed, now()) {
		t.Error("a retirement or resumption older than twice MaxAge plus MaxSkew is still remembered")
	}
	if got := recv.retired.len() + recv.resumed.len(); got != 2 {
		t.Errorf("the memories hold %d IDs after twice MaxAge plus MaxSkew, want 2", got)
	}
}

// TestIDMemoryHasPastBound: past its bound, the memory of retired (or
// resumed) IDs reports every ID as retired until those it forgot would
// have lapsed: a peer's copy is refused (a full handshake), never a
// retired session brought back.
func TestIDMemoryHasPastBound(t *testing.T) {
	const ttl = 10 * time.Second
	cache, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	m := newIDMemory(1000, ttl)
	now := time.Now()
	first := cache.NewID()
	m.add(first, now)
	for range 1500 {
		now = now.Add(time.Millisecond)
		m.add(cache.NewID(), now)
	}
	if m.len() > 1000 {
		t.Errorf("the memory holds %d IDs, past its bound of 1000", m.len())
	}
	if !m.has(first, now) || !m.has(cache.NewID(), now) {
		t.Error("past the bound, an ID forgotten or never added is not reported as retired")
	}
	if !m.has(cache.NewID(), now.Add(-time.Second)) {
		t.Error("past the bound, an ID is not reported as retired at a message's earlier time")
	}
	// holds answers only for the IDs remembered: the store's loader must
	// not refuse every lookup of the farm while the memory is past it.
	last := cache.NewID()
	m.add(last, now)
	if !m.holds(last, now) {
		t.Error("holds does not report an ID just added")
	}
	if m.holds(cache.NewID(), now) {
		t.Error("past the bound, holds reports an ID never added")
	}
	now = now.Add(ttl)
	if m.has(first, now) || m.has(cache.NewID(), now) {
		t.Error("an ID is still reported as retired once the forgotten ones lapsed")
	}
}
