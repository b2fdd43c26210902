package keyexport

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

// testState returns a farm key set of the given epoch with prev previous keys.
func testState(epoch uint64, prev int) ticket.State {
	s := ticket.State{Epoch: epoch, Current: testKey(10), Next: testKey(20), Rotated: t0}
	for i := range prev {
		s.Previous = append(s.Previous, testKey(byte(30+10*i)))
	}
	return s
}

func mustSet(t testing.TB, s ticket.State, keep int) *Set {
	t.Helper()
	set, err := newSet(s, 0, time.Hour, keep)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func TestNewSetRolesAndTimes(t *testing.T) {
	set := mustSet(t, testState(7, 2), 2)
	h := time.Hour
	want := []SetKey{
		{Current, testKey(10), t0, t0.Add(h), t0.Add(3 * h)},
		{Next, testKey(20), t0.Add(h), t0.Add(2 * h), t0.Add(4 * h)},
		{Previous, testKey(30), t0.Add(-h), t0, t0.Add(2 * h)},
		{Previous, testKey(40), t0.Add(-2 * h), t0.Add(-h), t0.Add(h)},
	}
	if !slices.Equal(set.Keys, want) {
		t.Errorf("keys:\n got %+v\nwant %+v", set.Keys, want)
	}
	if _, err := newSet(testState(0, 0), 0, time.Hour, 2); err == nil {
		t.Error("newSet took a ring's own epoch-0 key set")
	}
	set.wipe()
	for _, k := range set.Keys {
		if k.Key != (ticket.Key{}) {
			t.Fatal("Wipe left a key")
		}
	}
}

// TestNginxKeysOrder checks the order of the nginx files: the encrypting key
// first, the next key second, previous keys newest first, then fillers, so
// that there are always keep+2 distinct keys.
func TestNginxKeysOrder(t *testing.T) {
	for _, tt := range []struct {
		prev, keep int
		want       []ticket.Key // nil: a filler
	}{
		{0, 2, []ticket.Key{testKey(10), testKey(20), {}, {}}},
		{1, 2, []ticket.Key{testKey(10), testKey(20), testKey(30), {}}},
		{2, 2, []ticket.Key{testKey(10), testKey(20), testKey(30), testKey(40)}},
		{3, 2, []ticket.Key{testKey(10), testKey(20), testKey(30), testKey(40)}},
		{1, 1, []ticket.Key{testKey(10), testKey(20), testKey(30)}},
	} {
		set := mustSet(t, testState(3, tt.prev), tt.keep)
		got := nginxKeys(set)
		if len(got) != NginxFileCount(tt.keep) {
			t.Fatalf("prev %d keep %d: %d keys, want %d", tt.prev, tt.keep, len(got), NginxFileCount(tt.keep))
		}
		for i, w := range tt.want {
			if w != (ticket.Key{}) && got[i] != w {
				t.Errorf("prev %d keep %d: file %d holds %v, want %v", tt.prev, tt.keep, i, got[i], w)
			}
		}
		if len(distinct(got)) != len(got) {
			t.Errorf("prev %d keep %d: a key repeats", tt.prev, tt.keep)
		}
	}
}

// TestHAProxyFileOrder checks the tls-ticket-keys file: oldest first, the
// encrypting key second to last and the next key last, at least three
// lines of base64 80-byte keys in HAProxy's layout.
func TestHAProxyFileOrder(t *testing.T) {
	for _, prev := range []int{0, 1, 2} {
		set := mustSet(t, testState(3, prev), 2)
		lines := strings.Split(strings.TrimSuffix(string(haproxyFile(set)), "\n"), "\n")
		if want := max(3, prev+2); len(lines) != want {
			t.Fatalf("prev %d: %d lines, want %d", prev, len(lines), want)
		}
		keyLine := func(k ticket.Key) string {
			b := HAProxyKey(k)
			return base64.StdEncoding.EncodeToString(b[:])
		}
		n := len(lines)
		if lines[n-1] != keyLine(testKey(20)) || lines[n-2] != keyLine(testKey(10)) {
			t.Errorf("prev %d: the last two lines are not the next and the current key", prev)
		}
		if prev > 0 && lines[n-3] != keyLine(testKey(30)) {
			t.Errorf("prev %d: the third line from the end is not the newest previous key", prev)
		}
		for _, l := range lines {
			if b, err := base64.StdEncoding.DecodeString(l); err != nil || len(b) != 80 {
				t.Errorf("line %q is not a base64 80-byte key", l)
			}
		}
	}
}

func TestJSONFile(t *testing.T) {
	set := mustSet(t, testState(9, 1), 2)
	b, err := jsonFile(set)
	if err != nil {
		t.Fatal(err)
	}
	var got JSONSet
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Format != jsonSetFormat || got.Epoch != 9 || got.Keep != 2 || got.IntervalSeconds != 3600 || len(got.Keys) != 3 {
		t.Fatalf("file: %+v", got)
	}
	roles := []Role{Current, Next, Previous}
	for i, k := range got.Keys {
		key, err := base64.StdEncoding.DecodeString(k.Key)
		if err != nil || len(key) != 32 || len(k.Name) != 32 {
			t.Errorf("key %d: bad key or name", i)
		}
		if k.Role != roles[i] || !k.EncryptsFrom.Equal(set.Keys[i].EncryptsFrom) || !k.DecryptsUntil.Equal(set.Keys[i].DecryptsUntil) {
			t.Errorf("key %d: %+v", i, k)
		}
		if bytes.Contains(b, []byte(base64.StdEncoding.EncodeToString(set.Keys[i].Key[:]))) {
			t.Errorf("key %d: the file holds the farm key itself", i)
		}
	}
}

func distinct(keys []ticket.Key) map[ticket.Key]bool {
	m := map[ticket.Key]bool{}
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// FuzzSets checks the invariants of every format over arbitrary key sets:
// the sizes, the encrypting key's place, and no repeated key.
func FuzzSets(f *testing.F) {
	f.Add(uint64(1), uint8(0), uint8(2), int64(0), true, uint8(0))
	f.Add(uint64(99), uint8(5), uint8(1), int64(1e9), false, uint8(0))
	f.Add(uint64(12), uint8(6), uint8(2), int64(1e9), true, uint8(4))
	f.Fuzz(func(t *testing.T, epoch uint64, prev, keep uint8, rotated int64, staged bool, merged uint8) {
		if epoch == 0 {
			return
		}
		s := ticket.State{Epoch: epoch, Current: testKey(1), Rotated: time.Unix(0, rotated)}
		if staged {
			s.Next = testKey(2)
		}
		for i := range int(prev % 20) {
			s.Previous = append(s.Previous, testKey(byte(3+i)))
		}
		k := int(keep % 17)
		foreign := int(merged) % (len(s.Previous) + 1)
		set, err := newSet(s, foreign, time.Minute, k)
		if err != nil {
			t.Fatal(err)
		}
		ng := nginxKeys(set)
		if len(ng) != k+2 || ng[0] != s.Current || len(distinct(ng)) != len(ng) {
			t.Fatalf("nginx keys: %d keys, first %v", len(ng), ng[0])
		}
		// The farm's own previous keys fill nginx's window before any
		// merged key does.
		own := s.Previous[:len(s.Previous)-foreign]
		for i, p := range own[:min(k, len(own))] {
			if ng[2+i] != p {
				t.Fatalf("nginx file %d holds %v, want the farm's previous key %v", 2+i, ng[2+i], p)
			}
		}
		hp := haproxyKeys(set)
		if len(hp) < haproxyRingSize || hp[len(hp)-2] != s.Current || len(distinct(hp)) != len(hp) {
			t.Fatalf("haproxy keys: %d keys", len(hp))
		}
		want := haproxyWant(set, 5)
		if len(want) != 5 {
			t.Fatalf("haproxyWant gave %d keys, want 5", len(want))
		}
		if _, err := jsonFile(set); err != nil {
			t.Fatal(err)
		}
	})
}
