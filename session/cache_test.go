package session_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// newCache returns a cache that is closed when the test ends.
func newCache(t testing.TB, cfg *session.Config) *session.Cache {
	t.Helper()
	c, err := session.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// record returns a record whose state is n bytes of v.
func record(n int, v byte, d time.Duration) session.Record {
	return session.Record{State: bytes.Repeat([]byte{v}, n), ServerName: "localhost", Expires: time.Now().Add(d)}
}

func TestGetBuffer(t *testing.T) {
	c := newCache(t, nil)
	id := c.NewID()
	want := []byte("0123456789")
	if err := c.Insert(id, session.Record{State: want, Expires: time.Now().Add(time.Hour)}, session.OriginAPI); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		size int
	}{
		{"short", 4},
		{"exact", 10},
		{"long", 32},
		{"empty", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf := bytes.Repeat([]byte{'x'}, tc.size)
			n, ok := c.GetBuffer(id, buf)
			if !ok || n != len(want) {
				t.Fatalf("GetBuffer = %d, %t; want %d, true", n, ok, len(want))
			}
			k := min(tc.size, len(want))
			if !bytes.Equal(buf[:k], want[:k]) {
				t.Fatalf("buffer = %q, want prefix %q", buf[:k], want[:k])
			}
			if !bytes.Equal(buf[k:], bytes.Repeat([]byte{'x'}, tc.size-k)) {
				t.Fatalf("GetBuffer wrote past the state: %q", buf)
			}
		})
	}
	if n, ok := c.GetBuffer(c.NewID(), make([]byte, 8)); ok || n != 0 {
		t.Fatalf("GetBuffer of absent ID = %d, %t; want 0, false", n, ok)
	}
}

func TestInsertValidation(t *testing.T) {
	c := newCache(t, &session.Config{MaxStateLen: 64})
	other := newCache(t, nil)
	live := time.Hour
	tests := []struct {
		name string
		id   session.ID
		rec  session.Record
		want error
	}{
		{"ok", c.NewID(), record(16, 1, live), nil},
		{"forged", other.NewID(), record(16, 1, live), session.ErrForgedID},
		{"tampered", tamper(c.NewID()), record(16, 1, live), session.ErrForgedID},
		{"empty", c.NewID(), session.Record{Expires: time.Now().Add(live)}, session.ErrInvalidRecord},
		{"oversized", c.NewID(), record(65, 1, live), session.ErrInvalidRecord},
		{"expired", c.NewID(), record(16, 1, -time.Second), session.ErrExpired},
		{"chain too old", c.NewID(), session.Record{State: []byte{1}, Expires: time.Now().Add(live),
			ChainStart: time.Now().Add(-24*time.Hour - time.Second)}, session.ErrExpired},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := c.Insert(tc.id, tc.rec, session.OriginPeer); !errors.Is(err, tc.want) {
				t.Fatalf("Insert = %v, want %v", err, tc.want)
			}
			_, ok := lookup(c, tc.id)
			if ok != (tc.want == nil) {
				t.Fatalf("after Insert, Lookup found = %t", ok)
			}
		})
	}
	st := stats(c)
	if st.ForgedIDs != 2 || st.Oversized != 1 {
		t.Fatalf("ForgedIDs = %d, Oversized = %d; want 2 and 1", st.ForgedIDs, st.Oversized)
	}
}

func tamper(id session.ID) session.ID {
	id[session.IDLen-1] ^= 1
	return id
}

func TestInsertReplaces(t *testing.T) {
	c := newCache(t, nil)
	var rec recorder
	c.AddHook(session.EventNew|session.EventGet|session.EventRemove, rec.hook)
	id := c.NewID()
	c.Insert(id, record(8, 1, time.Hour), session.OriginAPI)
	c.Insert(id, record(8, 2, time.Hour), session.OriginPeer)
	evs := rec.take()
	if len(evs) != 2 || evs[0].Kind != session.EventNew || evs[1].Kind != session.EventNew || evs[1].Origin != session.OriginPeer {
		t.Fatalf("events = %+v, want NEW then NEW(peer), no REMOVE", summary(evs))
	}
	if r, _ := lookup(c, id); r.State[0] != 2 {
		t.Fatal("Insert of an existing ID did not replace its record")
	}
	if n := stats(c).Size; n != 1 {
		t.Fatalf("Size = %d, want 1", n)
	}
}

func TestLRUEviction(t *testing.T) {
	c := newCache(t, &session.Config{Capacity: 3, Buckets: 1})
	ids := []session.ID{c.NewID(), c.NewID(), c.NewID(), c.NewID()}
	for _, id := range ids[:3] {
		c.Insert(id, record(8, 1, time.Hour), session.OriginAPI)
	}
	c.Get(ids[0]) // ids[1] is now the least recently used
	c.Insert(ids[3], record(8, 1, time.Hour), session.OriginAPI)
	for i, want := range []bool{true, false, true, true} {
		if _, ok := lookup(c, ids[i]); ok != want {
			t.Fatalf("after eviction, ids[%d] present = %t, want %t", i, ok, want)
		}
	}
	if st := stats(c); st.Evicted != 1 || st.Size != 3 {
		t.Fatalf("Evicted = %d, Size = %d; want 1 and 3", st.Evicted, st.Size)
	}
}

func TestSweep(t *testing.T) {
	clk := newClock()
	c := newCache(t, &session.Config{Now: clk.Now, SweepInterval: -1})
	var rec recorder
	c.AddHook(session.EventRemove, rec.hook)
	short, long := c.NewID(), c.NewID()
	c.Insert(short, session.Record{State: []byte{1}, Expires: clk.Now().Add(time.Minute)}, session.OriginAPI)
	c.Insert(long, session.Record{State: []byte{1}, Expires: clk.Now().Add(time.Hour)}, session.OriginAPI)
	clk.Advance(2 * time.Minute)
	if n := c.Sweep(); n != 1 {
		t.Fatalf("Sweep removed %d, want 1", n)
	}
	evs := rec.take()
	if len(evs) != 1 || evs[0].ID != short || evs[0].Reason != session.Expired {
		t.Fatalf("events = %v, want one expiry of the short session", summary(evs))
	}
	if n := stats(c).Size; n != 1 {
		t.Fatalf("Size = %d after sweep, want 1", n)
	}
}

func TestBackgroundSweep(t *testing.T) {
	c := newCache(t, &session.Config{SweepInterval: 10 * time.Millisecond})
	id := c.NewID()
	c.Insert(id, session.Record{State: []byte{1}, Expires: time.Now().Add(20 * time.Millisecond)}, session.OriginAPI)
	deadline := time.Now().Add(5 * time.Second)
	for stats(c).Size != 0 {
		if time.Now().After(deadline) {
			t.Fatal("background sweep did not remove the expired session")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := stats(c); st.Expired != 1 {
		t.Fatalf("Expired = %d, want 1", st.Expired)
	}
}

func TestHooksOrderAndUnregister(t *testing.T) {
	c := newCache(t, nil)
	var order []string
	remove1 := c.AddHook(session.EventNew, func(session.Event) { order = append(order, "h1") })
	c.AddHook(session.EventNew|session.EventRemove, func(ev session.Event) { order = append(order, "h2:"+ev.Kind.String()) })
	c.AddHook(session.EventGet, func(session.Event) { order = append(order, "h3") })
	id := c.NewID()
	c.Insert(id, record(8, 1, time.Hour), session.OriginAPI)
	remove1()
	remove1() // idempotent
	c.Insert(c.NewID(), record(8, 1, time.Hour), session.OriginAPI)
	c.Get(id)
	c.Remove(id)
	want := []string{"h1", "h2:new", "h2:new", "h3", "h2:remove"}
	if !slices.Equal(order, want) {
		t.Fatalf("hook calls = %v, want %v", order, want)
	}
}

func TestHookMayCallCache(t *testing.T) {
	c := newCache(t, nil)
	var got []byte
	c.AddHook(session.EventNew, func(ev session.Event) {
		// As in ATS, a NEW hook fetches the session it was told about.
		buf := make([]byte, 64)
		n, _ := c.GetBuffer(ev.ID, buf)
		got = buf[:n]
	})
	c.Insert(c.NewID(), record(8, 9, time.Hour), session.OriginAPI)
	if !bytes.Equal(got, bytes.Repeat([]byte{9}, 8)) {
		t.Fatalf("hook read %v", got)
	}
}

func TestHookPanicRecovered(t *testing.T) {
	var logs bytes.Buffer
	c := newCache(t, &session.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	c.AddHook(session.EventNew, func(session.Event) { panic("boom") })
	var after int
	c.AddHook(session.EventNew, func(session.Event) { after++ })
	for range 3 {
		if err := c.Insert(c.NewID(), record(8, 1, time.Hour), session.OriginAPI); err != nil {
			t.Fatal(err)
		}
	}
	if n := stats(c).HookPanics; n != 3 {
		t.Fatalf("HookPanics = %d, want 3", n)
	}
	if after != 3 {
		t.Fatalf("hook after the panicking one ran %d times, want 3", after)
	}
	if n := strings.Count(logs.String(), "hook panicked"); n != 1 {
		t.Fatalf("panic logged %d times, want once:\n%s", n, logs.String())
	}
}

func TestForgedIDsNeverReachLoader(t *testing.T) {
	var calls int
	c := newCache(t, nil)
	c.Join(loadFunc(func(context.Context, session.ID) (*session.Record, error) {
		calls++
		return nil, nil
	}), 0)
	other := newCache(t, nil)
	good := c.NewID()
	forged := [][]byte{
		nil,
		{},
		good[:session.IDLen-1], // truncated
		append(good[:], 0),     // too long
		func() []byte { x := tamper(good); return x[:] }(),
		func() []byte { x := good; x[0] = 9; return x[:] }(), // unknown version
		func() []byte { x := good; x[1]++; return x[:] }(),   // unknown key ID
		func() []byte { x := other.NewID(); return x[:] }(),  // another key
		bytes.Repeat([]byte{0xff}, 200),                      // a stateless ticket, in Stateful mode
	}
	for _, b := range forged {
		if ss, err := unwrap(c, b, tls.ConnectionState{ServerName: "localhost"}); ss != nil || err != nil {
			t.Fatalf("UnwrapSession(%x) = %v, %v; want nil, nil", b, ss, err)
		}
	}
	if calls != 0 {
		t.Fatalf("loader called %d times for forged IDs", calls)
	}
	if n := stats(c).ForgedIDs; n != uint64(len(forged)-2) {
		t.Fatalf("ForgedIDs = %d, want %d (empty identities are not counted)", n, len(forged)-2)
	}
	unwrap(c, good[:], tls.ConnectionState{})
	if calls != 1 {
		t.Fatalf("loader called %d times for an authentic unknown ID, want 1", calls)
	}
}

func TestLoaderTimeout(t *testing.T) {
	c := newCache(t, nil)
	c.Join(loadFunc(func(ctx context.Context, id session.ID) (*session.Record, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}), 20*time.Millisecond)
	id := c.NewID()
	start := time.Now()
	ss, err := unwrap(c, id[:], tls.ConnectionState{})
	if ss != nil || err != nil {
		t.Fatalf("UnwrapSession = %v, %v; want nil, nil", ss, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("UnwrapSession waited %v for a 20ms loader deadline", d)
	}
	if n := stats(c).LoaderErrors; n != 1 {
		t.Fatalf("LoaderErrors = %d, want 1", n)
	}
}

func TestIDKeyRotation(t *testing.T) {
	k1 := session.IDKey{ID: 1, Key: [32]byte{1}}
	k2 := session.IDKey{ID: 2, Key: [32]byte{2}}
	c := newCache(t, nil)
	if err := c.SetIDKeys(k1); err != nil {
		t.Fatal(err)
	}
	old := c.NewID()
	if err := c.SetIDKeys(k2, k1); err != nil {
		t.Fatal(err)
	}
	fresh := c.NewID()
	if fresh[1] != 2 {
		t.Fatalf("new ID minted under key %d, want 2", fresh[1])
	}
	for _, id := range []session.ID{old, fresh} {
		if _, ok := c.CheckID(id[:]); !ok {
			t.Fatalf("ID under key %d rejected during rotation", id[1])
		}
	}
	c.SetIDKeys(k2)
	if _, ok := c.CheckID(old[:]); ok {
		t.Fatal("ID under a dropped key still accepted")
	}
	for _, bad := range [][]session.IDKey{nil, {k1, k1}} {
		if err := c.SetIDKeys(bad...); err == nil {
			t.Fatalf("SetIDKeys(%d keys with duplicates or none) succeeded", len(bad))
		}
	}
}

func TestParseID(t *testing.T) {
	c := newCache(t, nil)
	id := c.NewID()
	got, err := session.ParseID(id.String())
	if err != nil || got != id {
		t.Fatalf("ParseID(String()) = %v, %v", got, err)
	}
	for _, bad := range []string{"", "zz", strings.Repeat("g", 2*session.IDLen), "09" + id.String()[2:]} {
		if _, err := session.ParseID(bad); err == nil {
			t.Fatalf("ParseID(%q) succeeded", bad)
		}
	}
}

func TestRemoveChainFromPeer(t *testing.T) {
	c := newCache(t, nil)
	var rec recorder
	c.AddHook(session.EventRemove, rec.hook)
	r := record(8, 1, time.Hour)
	r.Chain = 42
	a, b, other := c.NewID(), c.NewID(), c.NewID()
	c.Insert(a, r, session.OriginAPI)
	c.Insert(b, r, session.OriginAPI)
	c.Insert(other, record(8, 1, time.Hour), session.OriginAPI)
	if n := c.RemoveChain(42, time.Now().Add(time.Hour), session.OriginPeer); n != 2 {
		t.Fatalf("RemoveChain removed %d, want 2", n)
	}
	if got := summary(rec.take()); !slices.Equal(got, []string{"remove/peer/removed", "remove/peer/removed"}) {
		t.Fatalf("events = %v", got)
	}
	if err := c.Insert(c.NewID(), r, session.OriginPeer); err != session.ErrRevoked {
		t.Fatalf("Insert into revoked chain = %v, want ErrRevoked", err)
	}
	if _, ok := lookup(c, other); !ok {
		t.Fatal("RemoveChain removed a session of another chain")
	}
}

func TestModeParse(t *testing.T) {
	for _, m := range []session.Mode{session.Stateful, session.Stateless, session.Mixed} {
		got, err := session.ParseMode(strings.ToUpper(m.String()))
		if err != nil || got != m {
			t.Fatalf("ParseMode(%q) = %v, %v", m, got, err)
		}
	}
	if _, err := session.ParseMode("sometimes"); err == nil {
		t.Fatal("ParseMode accepted nonsense")
	}
	if _, err := session.New(&session.Config{Mode: 9}); err == nil {
		t.Fatal("New accepted an unknown mode")
	}
}

// TestConcurrentUse drives every operation at once; run with -race.
func TestConcurrentUse(t *testing.T) {
	c := newCache(t, &session.Config{Capacity: 256, Buckets: 4, SweepInterval: time.Millisecond})
	var hooked sync.Map
	c.AddHook(session.EventNew, func(ev session.Event) { hooked.Store(ev.ID, true) })
	var wg sync.WaitGroup
	var ok atomic.Uint64
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for i := range 2000 {
				id := c.NewID()
				if c.Insert(id, record(16, byte(g), time.Duration(i%5)*time.Millisecond+time.Millisecond), session.OriginAPI) == nil {
					ok.Add(1)
				}
				c.Get(id)
				c.GetBuffer(id, buf)
				if i%100 == 0 {
					c.Remove(id)
					stats(c)
				}
			}
		}()
	}
	wg.Wait()
	st := stats(c)
	if st.Inserts != ok.Load() || st.Inserts < 7000 {
		t.Fatalf("Inserts = %d, want %d successful inserts of 8000", st.Inserts, ok.Load())
	}
	if st.Size > 256+4 {
		t.Fatalf("Size = %d, over capacity", st.Size)
	}
}

// TestInsertWithParentCutsParent: a peer's session that was resumed from one
// we hold cuts ours to the grace period, as the resuming server did.
func TestInsertWithParentCutsParent(t *testing.T) {
	c := newCache(t, &session.Config{ResumeGrace: 10 * time.Second})
	parent, child := c.NewID(), c.NewID()
	c.Insert(parent, record(8, 1, time.Hour), session.OriginPeer)
	r := record(8, 2, time.Hour)
	r.Parent = parent
	if err := c.Insert(child, r, session.OriginPeer); err != nil {
		t.Fatal(err)
	}
	p, ok := lookup(c, parent)
	if !ok {
		t.Fatal("parent gone")
	}
	if left := time.Until(p.Expires); left > 10*time.Second || left < 5*time.Second {
		t.Fatalf("parent expires in %v, want the 10s grace", left)
	}
	if ch, _ := lookup(c, child); time.Until(ch.Expires) < 50*time.Minute {
		t.Fatal("child was cut too")
	}
}

// TestBucketsOutOfRange: a Buckets field beyond the capacity is cut to it,
// however large, and the cache works.
func TestBucketsOutOfRange(t *testing.T) {
	for _, buckets := range []int{-1, 0, 1, 3, 1 << 20, 1<<62 + 1, math.MaxInt} {
		c := newCache(t, &session.Config{Capacity: 1000, Buckets: buckets})
		id := c.NewID()
		if err := c.Insert(id, record(8, 1, time.Hour), session.OriginAPI); err != nil {
			t.Fatalf("Buckets %d: %v", buckets, err)
		}
		if _, ok := c.GetBuffer(id, nil); !ok {
			t.Fatalf("Buckets %d: the session inserted is not found", buckets)
		}
	}
}

// TestCloseFromSweepHook: a hook may call the cache, Close included, also
// when the event comes from the background sweep that Close stops.
func TestCloseFromSweepHook(t *testing.T) {
	c, err := session.New(&session.Config{SweepInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	c.AddHook(session.EventRemove, func(ev session.Event) {
		if ev.Origin == session.OriginSweep {
			c.Close()
			close(closed)
		}
	})
	if err := c.Insert(c.NewID(), record(8, 1, 10*time.Millisecond), session.OriginAPI); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close called by a hook of the sweep did not return")
	}
}
