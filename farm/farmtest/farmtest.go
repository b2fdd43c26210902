// Package farmtest holds conformance tests for farm transports: every Bus
// and Store implementation runs them against its real server, so that the
// farm can rely on one contract whatever carries its messages. It also
// holds the harness that the farm's tests and each transport's use to run
// a farm of TLS servers in one process (Start, Join, Member).
package farmtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// FarmName returns a farm name that no other test uses: the test's name
// (shortened) and a random suffix, so that tests sharing one server never
// see each other's keys or messages.
func FarmName(tb testing.TB) string {
	var b [6]byte
	rand.Read(b[:])
	name := strings.NewReplacer("/", "-", " ", "_").Replace(tb.Name())
	if len(name) > 40 {
		name = name[:40]
	}
	return name + "-" + hex.EncodeToString(b[:])
}

// ServerURL returns the URL of a server that the machine shares with the
// tests, what (such as "NATS"): environment variable env, or def. Unless
// something answers at the URL's host and port it skips the test, or fails
// it where services are required (see testenv).
func ServerURL(tb testing.TB, what, env, def string) string {
	tb.Helper()
	u := os.Getenv(env)
	if u == "" {
		u = def
	}
	addr := u
	if p, err := url.Parse(u); err == nil {
		addr = p.Host
	}
	testenv.NeedTCP(tb, what, addr)
	return u
}

// subscriber collects what a Subscribe delivers.
type subscriber struct {
	mu   sync.Mutex
	msgs [][]byte
	up   chan struct{}
	once sync.Once
	done chan error
}

func subscribe(ctx context.Context, b transport.Bus) *subscriber {
	s := &subscriber{up: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		s.done <- b.Subscribe(ctx, func(m []byte) {
			s.mu.Lock()
			s.msgs = append(s.msgs, bytes.Clone(m))
			s.mu.Unlock()
		}, func(up bool, err error) {
			if up {
				s.once.Do(func() { close(s.up) })
			}
		})
	}()
	return s
}

func (s *subscriber) got() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.msgs...)
}

// TestBus checks a Bus made by newBus for a farm name: every subscriber
// receives every message, in publication order, byte for byte; buses of
// other farms see nothing; Subscribe reports when it is up and returns
// promptly when its context ends.
func TestBus(t *testing.T, newBus func(t *testing.T, farmName string) transport.Bus) {
	name := FarmName(t)
	pub, sub1, sub2 := newBus(t, name), newBus(t, name), newBus(t, name)
	stranger := newBus(t, name+"-other")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s1, s2, s3 := subscribe(ctx, sub1), subscribe(ctx, sub2), subscribe(ctx, stranger)
	for _, s := range []*subscriber{s1, s2, s3} {
		select {
		case <-s.up:
		case <-time.After(10 * time.Second):
			t.Fatal("Subscribe never reported up")
		}
	}
	var want [][]byte
	for i := range 50 {
		m := []byte(fmt.Sprintf("message %d \x00\xff", i))
		want = append(want, m)
	}
	if err := pub.Publish(ctx, want[0]); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, want[1:]...); err != nil {
		t.Fatal(err)
	}
	for i, s := range []*subscriber{s1, s2} {
		deadline := time.Now().Add(10 * time.Second)
		for len(s.got()) < len(want) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		got := s.got()
		if len(got) != len(want) {
			t.Fatalf("subscriber %d got %d messages, want %d", i+1, len(got), len(want))
		}
		for j := range want {
			if !bytes.Equal(got[j], want[j]) {
				t.Fatalf("subscriber %d message %d = %q, want %q", i+1, j, got[j], want[j])
			}
		}
	}
	if n := len(s3.got()); n != 0 {
		t.Fatalf("a bus of another farm received %d messages", n)
	}
	cancel()
	for _, s := range []*subscriber{s1, s2, s3} {
		select {
		case err := <-s.done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Subscribe returned %v after cancel, want context.Canceled", err)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("Subscribe did not return within 3s of its context ending")
		}
	}
}

// putRecords writes items to s in one PutRecords if batch, else one call
// each, stopping at the first error.
func putRecords(ctx context.Context, s transport.RecordStore, batch bool, items []transport.Item) error {
	if batch {
		return s.PutRecords(ctx, items...)
	}
	for _, it := range items {
		if err := s.PutRecords(ctx, it); err != nil {
			return err
		}
	}
	return nil
}

// TestStore checks a Store made by newStore for a farm name: its session
// records (RecordStore) and its coordination keys (Coordinator).
func TestStore(t *testing.T, newStore func(t *testing.T, farmName string) transport.Store) {
	ctx := context.Background()
	name := FarmName(t)
	s := newStore(t, name)
	other := newStore(t, name+"-other")

	t.Run("PutGetDelete", func(t *testing.T) {
		val := []byte("v\x00\xff")
		if err := s.PutRecords(ctx, transport.Item{Key: "a", Value: val, TTL: time.Minute},
			transport.Item{Key: "b", Value: []byte("w"), TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
		if got, err := s.GetRecord(ctx, "a"); err != nil || !bytes.Equal(got, val) {
			t.Fatalf("GetRecord(a) = %q, %v", got, err)
		}
		if _, err := other.GetRecord(ctx, "a"); !errors.Is(err, transport.ErrNotFound) {
			t.Fatalf("another farm's store sees our key: %v", err)
		}
		if err := s.DeleteRecords(ctx, "a", "b", "never-there"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetRecord(ctx, "a"); !errors.Is(err, transport.ErrNotFound) {
			t.Fatalf("GetRecord after DeleteRecords: %v, want ErrNotFound", err)
		}
	})

	t.Run("CutMark", func(t *testing.T) { CheckCutMark(t, s) })
	t.Run("RetireMark", func(t *testing.T) { CheckRetireMark(t, s) })

	t.Run("IfPresent", func(t *testing.T) {
		// One present key and one absent, alone and in a batch with plain
		// writes: the present one is replaced with the new value and
		// (shorter) TTL, the absent ones stay absent.
		for _, batch := range []bool{false, true} {
			pre := fmt.Sprintf("ifp-%v-", batch)
			if err := s.PutRecords(ctx, transport.Item{Key: pre + "there", Value: []byte("old"), TTL: time.Minute}); err != nil {
				t.Fatal(err)
			}
			items := []transport.Item{
				{Key: pre + "there", Value: []byte("new"), TTL: 300 * time.Millisecond, IfPresent: true},
				{Key: pre + "gone", Value: []byte("back"), TTL: time.Minute, IfPresent: true},
			}
			if batch {
				items = append(items, transport.Item{Key: pre + "plain", Value: []byte("p"), TTL: time.Minute})
			}
			err := putRecords(ctx, s, batch, items)
			if err != nil {
				t.Fatalf("PutRecords with IfPresent (batch %v): %v", batch, err)
			}
			if got, err := s.GetRecord(ctx, pre+"there"); err != nil || string(got) != "new" {
				t.Fatalf("a present record written IfPresent (batch %v) reads %q, %v; want the new value", batch, got, err)
			}
			if got, err := s.GetRecord(ctx, pre+"gone"); !errors.Is(err, transport.ErrNotFound) {
				t.Fatalf("an absent record written IfPresent (batch %v) reads %q, %v; want ErrNotFound", batch, got, err)
			}
			if batch {
				if got, err := s.GetRecord(ctx, pre+"plain"); err != nil || string(got) != "p" {
					t.Fatalf("a plain write beside IfPresent ones reads %q, %v", got, err)
				}
			}
			// The replacement took the new TTL.
			deadline := time.Now().Add(5 * time.Second)
			for {
				_, err := s.GetRecord(ctx, pre+"there")
				if errors.Is(err, transport.ErrNotFound) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("a record replaced IfPresent with a 300ms TTL still reads after 5s: %v", err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		// A record with less left than the write's TTL (cut sooner by
		// another write) keeps its value and its end: a replacement only
		// shortens.
		for _, batch := range []bool{false, true} {
			key := fmt.Sprintf("ifp-short-%v", batch)
			if err := s.PutRecords(ctx, transport.Item{Key: key, Value: []byte("sooner"), TTL: 400 * time.Millisecond}); err != nil {
				t.Fatal(err)
			}
			items := []transport.Item{{Key: key, Value: []byte("later"), TTL: time.Minute, IfPresent: true}}
			if batch {
				items = append(items, transport.Item{Key: key + "-plain", Value: []byte("p"), TTL: time.Minute})
			}
			if err := s.PutRecords(ctx, items...); err != nil {
				t.Fatalf("PutRecords with IfPresent over a shorter record (batch %v): %v", batch, err)
			}
			if got, err := s.GetRecord(ctx, key); err != nil || string(got) != "sooner" {
				t.Fatalf("a record with less left than an IfPresent write (batch %v) reads %q, %v; want it unchanged", batch, got, err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				_, err := s.GetRecord(ctx, key)
				if errors.Is(err, transport.ErrNotFound) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("a 400ms record that an IfPresent write of a minute did not replace still reads after 5s: %v", err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	})

	t.Run("NoLonger", func(t *testing.T) {
		// Alone and in a batch with a plain write: an absent key (never
		// written, or deleted) is written; a present record that would outlive the write is
		// replaced (shortened); one with less left keeps its value and
		// its end.
		for _, batch := range []bool{false, true} {
			pre := fmt.Sprintf("nol-%v-", batch)
			for k, ttl := range map[string]time.Duration{"longer": time.Minute, "shorter": 2 * time.Second} {
				if err := s.PutRecords(ctx, transport.Item{Key: pre + k, Value: []byte("old"), TTL: ttl}); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.PutRecords(ctx, transport.Item{Key: pre + "deleted", Value: []byte("old"), TTL: time.Minute}); err != nil {
				t.Fatal(err)
			}
			if err := s.DeleteRecords(ctx, pre+"deleted"); err != nil {
				t.Fatal(err)
			}
			items := []transport.Item{
				{Key: pre + "absent", Value: []byte("new"), TTL: time.Minute, NoLonger: true},
				{Key: pre + "deleted", Value: []byte("new"), TTL: time.Minute, NoLonger: true},
				{Key: pre + "longer", Value: []byte("new"), TTL: 300 * time.Millisecond, NoLonger: true},
				{Key: pre + "shorter", Value: []byte("new"), TTL: time.Minute, NoLonger: true},
			}
			if batch {
				items = append(items, transport.Item{Key: pre + "plain", Value: []byte("p"), TTL: time.Minute})
			}
			err := putRecords(ctx, s, batch, items)
			if err != nil {
				t.Fatalf("PutRecords with NoLonger (batch %v): %v", batch, err)
			}
			for k, want := range map[string]string{"absent": "new", "deleted": "new", "longer": "new", "shorter": "old"} {
				if got, err := s.GetRecord(ctx, pre+k); err != nil || string(got) != want {
					t.Fatalf("the %s record written NoLonger (batch %v) reads %q, %v; want %q", k, batch, got, err, want)
				}
			}
			if batch {
				if got, err := s.GetRecord(ctx, pre+"plain"); err != nil || string(got) != "p" {
					t.Fatalf("a plain write beside NoLonger ones reads %q, %v", got, err)
				}
			}
			// The shortened record took the new TTL, the kept one kept
			// its own; the absent one, written for a minute, stays. (The
			// kept one's 2 s leave room for a loaded machine between its
			// write and the NoLonger one: at 400 ms it had lapsed there
			// and was written anew.)
			deadline := time.Now().Add(8 * time.Second)
			for _, k := range []string{"longer", "shorter"} {
				for {
					_, err := s.GetRecord(ctx, pre+k)
					if errors.Is(err, transport.ErrNotFound) {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("the %s record (batch %v) still reads after 8s: %v; a NoLonger write lengthened it", k, batch, err)
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			if got, err := s.GetRecord(ctx, pre+"absent"); err != nil || string(got) != "new" {
				t.Fatalf("the record written NoLonger where none was (batch %v) reads %q, %v after the others lapsed", batch, got, err)
			}
		}
	})

	t.Run("GetRecords", func(t *testing.T) {
		g, ok := s.(transport.RecordGetter)
		if !ok {
			t.Skip("the store is not a transport.RecordGetter")
		}
		CheckGetRecords(t, s, g)
		og := other.(transport.RecordGetter)
		if got, err := og.GetRecords(ctx, "many-0"); err != nil || len(got) != 1 || got[0] != nil {
			t.Fatalf("another farm's store sees our key: %q, %v", got, err)
		}
	})

	t.Run("TakeRecord", func(t *testing.T) {
		taker, ok := s.(transport.RecordTaker)
		if !ok {
			t.Skip("the store is not a transport.RecordTaker")
		}
		if err := s.PutRecords(ctx, transport.Item{Key: "once", Value: []byte("v"), TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
		// Many concurrent takers: exactly one gets the value.
		var mu sync.Mutex
		var got [][]byte
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := taker.TakeRecord(ctx, "once")
				switch {
				case errors.Is(err, transport.ErrNotFound):
				case err != nil:
					t.Error(err)
				default:
					mu.Lock()
					got = append(got, v)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(got) != 1 || string(got[0]) != "v" {
			t.Fatalf("%d of 16 concurrent TakeRecord calls got the value (%q), want exactly 1", len(got), got)
		}
		if _, err := s.GetRecord(ctx, "once"); !errors.Is(err, transport.ErrNotFound) {
			t.Fatalf("GetRecord after TakeRecord: %v, want ErrNotFound", err)
		}
		added, err := taker.AddRecord(ctx, transport.Item{Key: "once", Value: []byte("w"), TTL: time.Minute})
		if err != nil || !added {
			t.Fatalf("AddRecord of a taken key = %t, %v", added, err)
		}
		added, err = taker.AddRecord(ctx, transport.Item{Key: "once", Value: []byte("x"), TTL: time.Minute})
		if err != nil || added {
			t.Fatalf("AddRecord of a present key = %t, %v; want false", added, err)
		}
		if v, err := taker.TakeRecord(ctx, "once"); err != nil || string(v) != "w" {
			t.Fatalf("TakeRecord = %q, %v; want w", v, err)
		}
	})

	t.Run("TTL", func(t *testing.T) {
		if err := s.PutRecords(ctx, transport.Item{Key: "short", Value: []byte("x"), TTL: 300 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetRecord(ctx, "short"); err != nil {
			t.Fatalf("GetRecord before expiry: %v", err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, err := s.GetRecord(ctx, "short")
			if errors.Is(err, transport.ErrNotFound) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("key with a 300ms TTL still there after 5s (%v)", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("SetNX", func(t *testing.T) {
		ok, err := s.SetNX(ctx, "lease", []byte("n1"), time.Minute)
		if err != nil || !ok {
			t.Fatalf("first SetNX = %t, %v", ok, err)
		}
		ok, err = s.SetNX(ctx, "lease", []byte("n2"), time.Minute)
		if err != nil || ok {
			t.Fatalf("second SetNX = %t, %v; want false", ok, err)
		}
		if got, _ := s.Get(ctx, "lease"); string(got) != "n1" {
			t.Fatalf("lease = %q, want n1", got)
		}
	})

	t.Run("CompareAndSwap", func(t *testing.T) {
		ok, err := s.CompareAndSwap(ctx, "epoch", nil, []byte("1"), 0)
		if err != nil || !ok {
			t.Fatalf("CAS from absent = %t, %v", ok, err)
		}
		if ok, _ := s.CompareAndSwap(ctx, "epoch", nil, []byte("9"), 0); ok {
			t.Fatal("CAS from absent succeeded on an existing key")
		}
		if ok, _ := s.CompareAndSwap(ctx, "epoch", []byte("0"), []byte("9"), 0); ok {
			t.Fatal("CAS with a stale old value succeeded")
		}
		ok, err = s.CompareAndSwap(ctx, "epoch", []byte("1"), []byte("2"), time.Minute)
		if err != nil || !ok {
			t.Fatalf("CAS 1->2 = %t, %v", ok, err)
		}
		if got, _ := s.Get(ctx, "epoch"); string(got) != "2" {
			t.Fatalf("epoch = %q, want 2", got)
		}
		// Concurrent swappers: exactly one wins each round.
		var wins sync.Map
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if ok, _ := s.CompareAndSwap(ctx, "epoch", []byte("2"), []byte(fmt.Sprint("3-", i)), 0); ok {
					wins.Store(i, true)
				}
			}()
		}
		wg.Wait()
		n := 0
		wins.Range(func(any, any) bool { n++; return true })
		if n != 1 {
			t.Fatalf("%d concurrent CAS calls won, want exactly 1", n)
		}
	})

	t.Run("Set", func(t *testing.T) {
		now, err := s.Time(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(now); d > 5*time.Second || d < -5*time.Second {
			t.Fatalf("store clock is %v off ours", d)
		}
		if err := s.SetAdd(ctx, "set", []byte("gone"), now.Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
		if err := s.SetAdd(ctx, "set", []byte("kept\x00"), now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if err := s.SetAdd(ctx, "set", []byte("also"), now.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		// A member longer than transport.MaxSetMemberSize is left out
		// (anyone who can write to the store can add one); one at the
		// bound is not.
		big := bytes.Repeat([]byte{'b'}, transport.MaxSetMemberSize)
		if err := s.SetAdd(ctx, "set", big, now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if err := s.SetAdd(ctx, "set", append(bytes.Clone(big), 'x'), now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		got, err := s.SetMembers(ctx, "set")
		if err != nil {
			t.Fatal(err)
		}
		found := map[string]bool{}
		for _, m := range got {
			found[string(m)] = true
		}
		if len(got) != 3 || !found["kept\x00"] || !found["also"] || !found[string(big)] {
			lens := make([]int, len(got))
			for i, m := range got {
				lens[i] = len(m)
			}
			t.Fatalf("SetMembers = members of %v bytes, want kept, also and one of %d bytes", lens, len(big))
		}
	})

	t.Run("SetVersion", func(t *testing.T) {
		sv, ok := s.(transport.SetVersioner)
		if !ok {
			t.Skip("not a transport.SetVersioner")
		}
		checkSetVersion(t, s, sv)
	})
}

// checkSetVersion checks a SetVersioner's contract: an empty set has the
// version nil; each SetAdd, of a new member or one already there, gives
// the set a version it never had; reads (SetMembers, SetVersion) leave it
// as it is; a set's version is its own.
func checkSetVersion(t *testing.T, s transport.Store, sv transport.SetVersioner) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	version := func(key string) []byte {
		t.Helper()
		v, err := sv.SetVersion(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := version("vset"); v != nil {
		t.Fatalf("version of a set never added to = %x, want nil", v)
	}
	now, err := s.Time(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i, m := range []string{"a", "b", "a"} {
		if err := s.SetAdd(ctx, "vset", []byte(m), now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		v := version("vset")
		if v == nil || seen[string(v)] {
			t.Fatalf("version after add %d = %x, want one not seen before (seen %d)", i, v, len(seen))
		}
		seen[string(v)] = true
		if _, err := s.SetMembers(ctx, "vset"); err != nil {
			t.Fatal(err)
		}
		if again := version("vset"); !bytes.Equal(again, v) {
			t.Fatalf("version changed from %x to %x with no add", v, again)
		}
	}
	if v := version("vset-other"); v != nil {
		t.Fatalf("version of another set = %x, want nil", v)
	}
	if got, err := s.SetMembers(ctx, "vset"); err != nil || len(got) != 2 {
		t.Fatalf("SetMembers = %d members, %v; want 2 (the version is no member)", len(got), err)
	}
}

// TestOpenURLs opens each URL of cases with open: one mapped to "" opens
// (and is closed), the others fail with an error that holds the word they
// map to, and no error shows the password that the cases' URLs carry,
// "s3cret".
func TestOpenURLs(t *testing.T, open func(url string) (io.Closer, error), cases map[string]string) {
	t.Helper()
	for _, url := range slices.Sorted(maps.Keys(cases)) {
		c, err := open(url)
		want := cases[url]
		if want == "" {
			if err != nil {
				t.Errorf("Open(%q): %v", url, err)
				continue
			}
			c.Close()
			continue
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%q) = %v, want an error about %q", url, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Open error shows the password: %v", err)
		}
	}
}

// CheckGetRecords checks g (the transport.RecordGetter of s): records
// written by s come back in the order asked, nil where a key has none, an
// empty request gets an empty answer, and a key asked twice comes back
// twice.
func CheckGetRecords(t *testing.T, s transport.RecordStore, g transport.RecordGetter) {
	t.Helper()
	ctx := context.Background()
	const n = 40
	var items []transport.Item
	var keys []string
	for i := range n {
		k := fmt.Sprintf("many-%d", i)
		keys = append(keys, k, "many-absent-"+k)
		if i%4 != 3 {
			items = append(items, transport.Item{Key: k, Value: []byte("v\x00" + k), TTL: time.Minute})
		}
	}
	if err := s.PutRecords(ctx, items...); err != nil {
		t.Fatal(err)
	}
	keys = append(keys, "many-0")
	got, err := g.GetRecords(ctx, keys...)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(keys) {
		t.Fatalf("GetRecords returned %d values for %d keys", len(got), len(keys))
	}
	for i, k := range keys {
		var want []byte
		if v, err := s.GetRecord(ctx, k); err == nil {
			want = v
		} else if !errors.Is(err, transport.ErrNotFound) {
			t.Fatal(err)
		}
		if !bytes.Equal(got[i], want) || (got[i] == nil) != (want == nil) {
			t.Fatalf("GetRecords[%d] (%s) = %q, GetRecord = %q", i, k, got[i], want)
		}
	}
	if got[0] == nil || got[2] == nil || got[6] != nil || got[1] != nil {
		t.Fatalf("GetRecords = %q..., want records at 0 and 2, none at 1 and 6", got[:8])
	}
	if got, err := g.GetRecords(ctx); err != nil || len(got) != 0 {
		t.Fatalf("GetRecords() = %q, %v", got, err)
	}
	keys = keys[:0]
	for _, it := range items {
		keys = append(keys, it.Key)
	}
	if err := s.DeleteRecords(ctx, keys...); err != nil {
		t.Fatal(err)
	}
}
