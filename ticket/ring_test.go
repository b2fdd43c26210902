package ticket_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// fakeClock is a RingConfig.Now that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newKeys(tb testing.TB, n int) []ticket.Key {
	tb.Helper()
	keys := make([]ticket.Key, n)
	for i := range keys {
		k, err := ticket.NewKey()
		if err != nil {
			tb.Fatal(err)
		}
		keys[i] = k
	}
	return keys
}

func newRing(tb testing.TB, cfg ticket.RingConfig) *ticket.Ring {
	tb.Helper()
	r, err := ticket.NewRing(cfg)
	if err != nil {
		tb.Fatalf("NewRing: %v", err)
	}
	return r
}

func TestNewKeyIsRandom(t *testing.T) {
	keys := newKeys(t, 2)
	if keys[0] == keys[1] || keys[0] == (ticket.Key{}) {
		t.Fatalf("NewKey returned %v and %v", keys[0], keys[1])
	}
}

func TestKeyFromBytes(t *testing.T) {
	good := bytes.Repeat([]byte{7}, 32)
	tests := []struct {
		name    string
		in      []byte
		wantErr string
	}{
		{"nil", nil, "key is 0 bytes long, want 32"},
		{"short", make([]byte, 31), "key is 31 bytes long, want 32"},
		{"long", make([]byte, 33), "key is 33 bytes long, want 32"},
		{"double", make([]byte, 64), "key is 64 bytes long, want 32"},
		{"zero", make([]byte, 32), "key is all zeros"},
		{"good", good, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ticket.KeyFromBytes(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("KeyFromBytes: err = %v, want one containing %q", err, tt.wantErr)
				}
				if k != (ticket.Key{}) {
					t.Errorf("KeyFromBytes returned a key with its error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(k[:], tt.in) {
				t.Fatal("key differs from its bytes")
			}
			tt.in[0] = 0 // the key is a copy
			if k[0] != 7 {
				t.Fatal("key shares memory with its bytes")
			}
		})
	}
}

func TestUpdateRejectsBadInput(t *testing.T) {
	ks := newKeys(t, 3)
	tests := []struct {
		name    string
		keys    []ticket.Key
		wantErr string
	}{
		{"no keys", nil, "ticket: Update needs at least one key"},
		{"empty list", []ticket.Key{}, "ticket: Update needs at least one key"},
		{"duplicate neighbours", []ticket.Key{ks[0], ks[0]}, "keys[1] is the same key as keys[0]"},
		{"duplicate apart", []ticket.Key{ks[0], ks[1], ks[2], ks[1]}, "keys[3] is the same key as keys[1]"},
		{"zero first", []ticket.Key{{}, ks[0]}, "keys[0] is the all-zero key"},
		{"zero later", []ticket.Key{ks[0], {}}, "keys[1] is the all-zero key"},
	}
	ss := captureSession(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRing(t, ticket.RingConfig{})
			cfg := serverConfig(t)
			r.Register(cfg)
			before := r.State()
			err := r.Update(tt.keys...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Update: err = %v, want one containing %q", err, tt.wantErr)
			}
			after := r.State()
			if after.Epoch != before.Epoch || after.Current != before.Current || after.Next != before.Next {
				t.Errorf("a failed Update changed the ring: %+v, was %+v", after, before)
			}
			checkConfigKeys(t, cfg, ss, before, append(before.Keys(), ks...))
		})
	}
}

func TestUpdateInstallsKeysInOrder(t *testing.T) {
	clock := newFakeClock()
	r := newRing(t, ticket.RingConfig{Keep: 1, Now: clock.Now})
	cfg := serverConfig(t)
	r.Register(cfg)
	old := r.State()
	ks := newKeys(t, 4)
	arg := slices.Clone(ks)
	clock.Advance(time.Minute)
	if err := r.Update(arg...); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(arg, ks) {
		t.Error("Update changed its argument")
	}
	got := r.State()
	want := ticket.State{Epoch: old.Epoch + 1, Current: ks[0], Previous: ks[1:], Rotated: clock.Now()}
	checkState(t, got, want)
	checkConfigKeys(t, cfg, captureSession(t), want, append(old.Keys(), ks...))
	if st := r.Status(); st.Keys != 4 || st.Staged || st.Current != ks[0].String() {
		t.Errorf("Status = %+v, want 4 keys, none staged, current %v", st, ks[0])
	}
}

func checkState(tb testing.TB, got, want ticket.State) {
	tb.Helper()
	if got.Epoch != want.Epoch || got.Current != want.Current || got.Next != want.Next ||
		!slices.Equal(got.Previous, want.Previous) || !got.Rotated.Equal(want.Rotated) {
		tb.Errorf("State = %+v,\nwant %+v", got, want)
	}
}

func TestNewRingDefaults(t *testing.T) {
	clock := newFakeClock()
	r := newRing(t, ticket.RingConfig{Now: clock.Now})
	st := r.Status()
	if st.Epoch != 0 || st.Keys != 2 || !st.Staged || st.Configs != 0 {
		t.Errorf("Status = %+v, want epoch 0, 2 keys (current and staged), 0 configs", st)
	}
	if !st.Rotated.Equal(clock.Now()) || !st.Due.Equal(clock.Now().Add(ticket.DefaultInterval)) {
		t.Errorf("Status = %+v, want rotated now, due in %v", st, ticket.DefaultInterval)
	}
	s := r.State()
	if s.Current == s.Next || s.Current == (ticket.Key{}) || s.Next == (ticket.Key{}) || len(s.Previous) != 0 {
		t.Errorf("fresh State = %+v", s)
	}
	for range 5 {
		if err := r.Rotate(); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(r.State().Previous); n != ticket.DefaultKeep {
		t.Errorf("after 5 rotations the ring keeps %d previous keys, want %d", n, ticket.DefaultKeep)
	}
}

func TestNewRingRejectsBadConfig(t *testing.T) {
	ks := newKeys(t, 2)
	tests := []struct {
		name    string
		cfg     ticket.RingConfig
		wantErr string
	}{
		{"negative interval", ticket.RingConfig{Interval: -time.Second}, "Interval is negative"},
		{"initial without current", ticket.RingConfig{Initial: &ticket.State{Next: ks[0]}}, "State.Current is the all-zero key"},
		{"initial with duplicate", ticket.RingConfig{Initial: &ticket.State{Current: ks[0], Previous: []ticket.Key{ks[1], ks[0]}}}, "State.Previous[1] is the same key as State.Current"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ticket.NewRing(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NewRing: err = %v, want one containing %q", err, tt.wantErr)
			}
			if r != nil {
				t.Error("NewRing returned a ring with its error")
			}
		})
	}
}

func TestNewRingFromInitialState(t *testing.T) {
	clock := newFakeClock()
	ks := newKeys(t, 4)
	initial := ticket.State{Epoch: 41, Current: ks[0], Next: ks[1], Previous: []ticket.Key{ks[2], ks[3]}}
	r := newRing(t, ticket.RingConfig{Now: clock.Now, Interval: time.Hour, Initial: &initial})
	initial.Previous[0] = ks[3] // the ring holds a copy
	want := ticket.State{Epoch: 41, Current: ks[0], Next: ks[1], Previous: []ticket.Key{ks[2], ks[3]}, Rotated: clock.Now()}
	checkState(t, r.State(), want)

	rotated := clock.Now().Add(-50 * time.Minute)
	r = newRing(t, ticket.RingConfig{Now: clock.Now, Interval: time.Hour, Initial: &ticket.State{Current: ks[0], Rotated: rotated}})
	if due := r.Status().Due; !due.Equal(clock.Now().Add(10 * time.Minute)) {
		t.Errorf("restored ring is due at %v, want 10 minutes from now (%v)", due, clock.Now().Add(10*time.Minute))
	}
}

// TestRotateMovesKeysThroughTheRing follows keys through a run of rotations:
// the staged key becomes current, the current key becomes previous, and the
// registered config always holds exactly the ring's keys.
func TestRotateMovesKeysThroughTheRing(t *testing.T) {
	for _, keep := range []int{-1, 1, 2, 3} {
		t.Run(fmt.Sprintf("keep=%d", keep), func(t *testing.T) {
			clock := newFakeClock()
			r := newRing(t, ticket.RingConfig{Keep: keep, Now: clock.Now})
			cfg := serverConfig(t)
			r.Register(cfg)
			ss := captureSession(t)
			seen := r.State().Keys()
			wantPrev := max(keep, 0)
			for i := range 5 {
				before := r.State()
				clock.Advance(time.Hour)
				if err := r.Rotate(); err != nil {
					t.Fatal(err)
				}
				after := r.State()
				seen = append(seen, after.Next)
				if after.Epoch != before.Epoch+1 || after.Current != before.Next || !after.Rotated.Equal(clock.Now()) {
					t.Fatalf("rotation %d: %+v after %+v", i+1, after, before)
				}
				if after.Next == (ticket.Key{}) || slices.Contains(before.Keys(), after.Next) {
					t.Fatalf("rotation %d staged %v, not a fresh key", i+1, after.Next)
				}
				wantLen := min(wantPrev, i+1)
				if len(after.Previous) != wantLen {
					t.Fatalf("rotation %d: %d previous keys, want %d", i+1, len(after.Previous), wantLen)
				}
				if wantLen > 0 {
					if !slices.Equal(after.Previous, append([]ticket.Key{before.Current}, before.Previous...)[:wantLen]) {
						t.Fatalf("rotation %d: previous %v, want %v then %v", i+1, after.Previous, before.Current, before.Previous)
					}
				}
				checkConfigKeys(t, cfg, ss, after, seen)
			}
		})
	}
}

func TestRotateAfterUpdateDrawsFreshCurrent(t *testing.T) {
	r := newRing(t, ticket.RingConfig{})
	ks := newKeys(t, 2)
	if err := r.Update(ks...); err != nil {
		t.Fatal(err)
	}
	if err := r.Rotate(); err != nil {
		t.Fatal(err)
	}
	s := r.State()
	if slices.Contains(ks, s.Current) || s.Next == (ticket.Key{}) || s.Next == s.Current {
		t.Fatalf("State after Update and Rotate = %+v", s)
	}
	if !slices.Equal(s.Previous, ks) {
		t.Fatalf("previous keys %v, want %v", s.Previous, ks)
	}
}

func TestStateRotateIsPure(t *testing.T) {
	ks := newKeys(t, 4)
	s := ticket.State{Epoch: 7, Current: ks[0], Next: ks[1], Previous: []ticket.Key{ks[2], ks[3]}}
	orig := s.Previous
	now := time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)
	next, err := s.Rotate(now, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Previous, []ticket.Key{ks[2], ks[3]}) || &orig[0] != &s.Previous[0] {
		t.Fatal("Rotate changed its receiver")
	}
	checkState(t, next, ticket.State{Epoch: 8, Current: ks[1], Next: next.Next, Previous: []ticket.Key{ks[0], ks[2]}, Rotated: now})
	next.Previous[0] = ks[3]
	if s.Previous[0] != ks[2] {
		t.Fatal("Rotate's result shares memory with its receiver")
	}
	if _, err := (ticket.State{}).Rotate(now, 2); err == nil {
		t.Fatal("Rotate of the zero State succeeded")
	}
}

func TestSet(t *testing.T) {
	ks := newKeys(t, 4)
	tests := []struct {
		name      string
		state     ticket.State
		wantErr   string
		wantStale bool
	}{
		{"same epoch", ticket.State{Epoch: 5, Current: ks[0]}, "got epoch 5, in use 5", true},
		{"older epoch", ticket.State{Epoch: 4, Current: ks[0]}, "got epoch 4, in use 5", true},
		{"zero epoch", ticket.State{Current: ks[0]}, "got epoch 0, in use 5", true},
		{"no current", ticket.State{Epoch: 6, Next: ks[0]}, "State.Current is the all-zero key", false},
		{"next is current", ticket.State{Epoch: 6, Current: ks[0], Next: ks[0]}, "State.Next is the same key as State.Current", false},
		{"previous repeats next", ticket.State{Epoch: 6, Current: ks[0], Next: ks[1], Previous: []ticket.Key{ks[2], ks[1]}}, "State.Previous[1] is the same key as State.Next", false},
		{"zero previous", ticket.State{Epoch: 6, Current: ks[0], Previous: []ticket.Key{{}}}, "State.Previous[0] is the all-zero key", false},
		{"newer epoch", ticket.State{Epoch: 6, Current: ks[0], Next: ks[1], Previous: []ticket.Key{ks[2], ks[3]}}, "", false},
		{"much newer epoch, nothing staged", ticket.State{Epoch: 1 << 40, Current: ks[3], Previous: []ticket.Key{ks[2], ks[1], ks[0]}}, "", false},
	}
	ss := captureSession(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			start := newKeys(t, 2)
			r := newRing(t, ticket.RingConfig{Now: clock.Now, Initial: &ticket.State{Epoch: 5, Current: start[0], Next: start[1]}})
			cfg := serverConfig(t)
			r.Register(cfg)
			before := r.State()
			clock.Advance(time.Minute)
			err := r.Set(tt.state)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Set: err = %v, want one containing %q", err, tt.wantErr)
				}
				if got := errors.Is(err, ticket.ErrStaleEpoch); got != tt.wantStale {
					t.Errorf("errors.Is(err, ErrStaleEpoch) = %v, want %v", got, tt.wantStale)
				}
				checkState(t, r.State(), before)
				checkConfigKeys(t, cfg, ss, before, append(before.Keys(), ks...))
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tt.state
			want.Rotated = clock.Now() // Set with a zero Rotated means now
			checkState(t, r.State(), want)
			checkConfigKeys(t, cfg, ss, want, append(before.Keys(), ks...))
		})
	}
}

func TestStateReturnsACopy(t *testing.T) {
	r := newRing(t, ticket.RingConfig{Keep: 1})
	for range 2 {
		if err := r.Rotate(); err != nil {
			t.Fatal(err)
		}
	}
	snap := r.State()
	want := snap
	want.Previous = slices.Clone(snap.Previous)
	snap.Previous[0] = ticket.Key{1}
	checkState(t, r.State(), want)
	snap.Previous[0] = want.Previous[0]
	for range 3 {
		if err := r.Rotate(); err != nil {
			t.Fatal(err)
		}
	}
	// The ring has dropped and wiped its own copies of these keys, not the
	// caller's.
	checkState(t, snap, want)
}

func TestRegister(t *testing.T) {
	r := newRing(t, ticket.RingConfig{})
	ss := captureSession(t)
	a, b := serverConfig(t), serverConfig(t)
	var seen []ticket.Key
	rotate := func() ticket.State {
		t.Helper()
		if err := r.Rotate(); err != nil {
			t.Fatal(err)
		}
		s := r.State()
		seen = append(seen, s.Keys()...)
		return s
	}
	s0 := r.State()
	seen = append(seen, s0.Keys()...)

	unregA := r.Register(a, a) // twice in one call: counted once
	unregB := r.Register(b)
	unregA2 := r.Register(a) // a second registration of a
	checkConfigKeys(t, a, ss, s0, seen)
	if n := r.Status().Configs; n != 2 {
		t.Errorf("Status.Configs = %d, want 2", n)
	}

	s1 := rotate()
	checkConfigKeys(t, a, ss, s1, seen)
	checkConfigKeys(t, b, ss, s1, seen)

	unregB()
	unregB() // no further effect
	unregA()
	s2 := rotate()
	checkConfigKeys(t, a, ss, s2, seen) // still registered by unregA2's call
	checkConfigKeys(t, b, ss, s1, seen) // keeps the keys it had
	if n := r.Status().Configs; n != 1 {
		t.Errorf("Status.Configs = %d, want 1", n)
	}

	unregA2()
	rotate()
	checkConfigKeys(t, a, ss, s2, seen)
	if n := r.Status().Configs; n != 0 {
		t.Errorf("Status.Configs = %d, want 0", n)
	}

	r.Register()() // nothing to register, nothing to undo

	defer func() {
		if recover() == nil {
			t.Error("Register(nil) did not panic")
		}
	}()
	r.Register(a, nil)
}

// TestConcurrentUse runs every method at once, with handshakes, for the race
// detector.
func TestConcurrentUse(t *testing.T) {
	r := newRing(t, ticket.RingConfig{Keep: 1})
	cfg := serverConfig(t)
	r.Register(cfg)
	addr := startServer(t, cfg)
	ks := newKeys(t, 2)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 20 {
				switch (g + i) % 7 {
				case 0:
					if err := r.Rotate(); err != nil {
						t.Error(err)
					}
				case 1:
					if err := r.Update(ks...); err != nil {
						t.Error(err)
					}
				case 2:
					s := r.State()
					s.Epoch += 1000
					if err := r.Set(s); err != nil && !errors.Is(err, ticket.ErrStaleEpoch) {
						t.Error(err)
					}
				case 3:
					_ = r.Status()
					_ = r.String()
				case 4:
					unreg := r.Register(serverConfig(t))
					unreg()
				case 5, 6:
					v := uint16(tls.VersionTLS13)
					if i%2 == 0 {
						v = tls.VersionTLS12
					}
					if _, err := dial(addr, clientConfig(t, v, tls.NewLRUClientSessionCache(1))); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
}
