package farm

import (
	"encoding/binary"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// parseKeySetSchedule is parseKeySet as the version that first wrote the
// writer's schedule read key sets: what such a node in the farm makes of
// a set this version writes.
func parseKeySetSchedule(b []byte) (keySet, error) {
	if len(b) < stateHeaderLen {
		return keySet{}, errors.New("farm: key set too short")
	}
	n := int(binary.BigEndian.Uint16(b[stateHeaderLen-2:]))
	end := stateHeaderLen + n*ticket.KeyLen
	var k keySet
	var p uint64
	switch len(b) - end {
	case 0:
	case trailerLen:
		k.extra = int(binary.BigEndian.Uint16(b[end:]))
		if k.extra > 0 { // with no extra keys, until means nothing
			k.until = binary.BigEndian.Uint64(b[end+2:])
		} else {
			p = binary.BigEndian.Uint64(b[end+2:])
		}
		b = b[:end]
	default:
		return keySet{}, errors.New("farm: key set has a bad length")
	}
	st, err := ticket.ParseState(b)
	if err != nil {
		return keySet{}, err
	}
	k.st = st
	// Another tag is a form of a later version: read as no trailer.
	if p>>60 == paramsTag {
		ms := p & paramsMaxMS
		if ms == 0 {
			return keySet{}, errors.New("farm: key set has a zero rotation interval")
		}
		k.interval = time.Duration(ms) * time.Millisecond
		k.keep = int(p >> 33 & paramsMaxKeep)
		if extra := int(p >> 53 & 0x7f); extra > 0 {
			if extra > maxMergedExtra {
				return keySet{}, errors.New("farm: key set has too many merged keys")
			}
			k.extra, k.until = extra, st.Epoch+(p>>43&paramsMaxDelta)
			if k.until < st.Epoch {
				return keySet{}, errors.New("farm: key set's merged keys last past the last epoch")
			}
		}
	}
	return k, nil
}

// TestKeySetRecordsMergedKeys: while merged keys are kept, a key set
// records where they are in Previous, through merges (a second one
// included, which puts its keys with the first's) and the lease holder's
// rotations, until they lapse; the record survives the encoding, and
// every older reader reads the set as it did before the record existed,
// or as a set without merged keys.
func TestKeySetRecordsMergedKeys(t *testing.T) {
	const keep = 2
	farm := keySet{st: newState(t, 7, 2), interval: time.Hour, keep: keep}
	mine1, mine2 := newState(t, 3, 2), newState(t, 2, 1)
	var merged []ticket.Key // every key a merge added
	check := func(step string, ks keySet) keySet {
		t.Helper()
		b, err := ks.bytes()
		if err != nil {
			t.Fatal(err)
		}
		back, err := parseKeySet(b)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if !reflect.DeepEqual(back, ks) {
			from, to := ks.mergedKeys()
			if from != to || back.placed {
				t.Fatalf("%s: round trip %+v, want %+v", step, back, ks)
			}
		}
		var want []ticket.Key
		for _, k := range back.st.Previous {
			if slices.Contains(merged, k) {
				want = append(want, k)
			}
		}
		from, to := back.mergedKeys()
		if got := back.st.Previous[from:to]; !slices.Equal(got, want) {
			t.Fatalf("%s: recorded as merged: Previous[%d:%d], %d keys; want the %d merged keys held", step, from, to, len(got), len(want))
		}
		if old, err := parseKeySetBefore(b); err != nil || !reflect.DeepEqual(old.st, ks.st) || old.extra != 0 {
			t.Fatalf("%s: the oldest reader reads %+v (%v)", step, old, err)
		}
		old, err := parseKeySetSchedule(b)
		if err != nil || !reflect.DeepEqual(old.st, ks.st) {
			t.Fatalf("%s: the last reader reads %+v (%v)", step, old, err)
		}
		if from < to && (old.extra != 0 || old.interval != 0) {
			t.Fatalf("%s: the last reader reads extra %d, interval %v; want none", step, old.extra, old.interval)
		}
		if from == to && (old.extra != ks.extra || old.interval != ks.interval) {
			t.Fatalf("%s: the last reader reads extra %d, interval %v; want %d, %v", step, old.extra, old.interval, ks.extra, ks.interval)
		}
		return back
	}
	rotate := func(ks keySet, i int) keySet {
		t.Helper()
		next, err := ks.successor(time.Unix(int64(5000+i), 0), time.Hour, keep)
		if err != nil {
			t.Fatal(err)
		}
		return next
	}
	merged = append(append(merged, mine1.Current), mine1.Previous...)
	ks := check("first merge", merge(farm, mine1, time.Hour, keep))
	ks = check("rotation 1", rotate(ks, 1))
	merged = append(append(merged, mine2.Current), mine2.Previous...)
	ks = check("second merge", merge(ks, mine2, time.Hour, keep))
	if from, to := ks.mergedKeys(); from != 1 || to != 6 {
		t.Fatalf("second merge: merged keys at [%d:%d], want [1:6] behind the farm's key of rotation 1", from, to)
	}
	for i := 2; i < 2+keep+2; i++ {
		ks = check("rotation", rotate(ks, i))
	}
	if ks.extra != 0 || len(ks.st.Previous) != keep {
		t.Fatalf("the merged keys did not lapse: extra %d, %d previous keys", ks.extra, len(ks.st.Previous))
	}
}

// TestKeySetMergedKeysBadRecord: a record of merged keys that no writer
// makes is refused.
func TestKeySetMergedKeysBadRecord(t *testing.T) {
	st := newState(t, 7, 3)
	for _, tc := range []struct {
		name string
		ks   keySet
	}{
		{"no merged keys", keySet{st: st, extra: 0, until: 8, interval: time.Second, keep: 1, placed: true, at: 1}},
		{"past the previous keys", keySet{st: st, extra: 1, until: 8, interval: time.Second, keep: 1, placed: true, at: 3}},
		{"zero interval", keySet{st: st, extra: 1, until: 8, interval: 0, keep: 1, placed: true, at: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.ks.st.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			b = binary.BigEndian.AppendUint16(b, 0)
			p := uint64(blockTag)<<60 | uint64(tc.ks.extra)<<53 | (tc.ks.until-st.Epoch)<<43 | uint64(tc.ks.keep)<<33 |
				uint64(tc.ks.at)<<23 | uint64(tc.ks.interval/time.Second)
			if _, err := parseKeySet(binary.BigEndian.AppendUint64(b, p)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
