package farmtest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// CheckCutMark checks that s keeps the cut mark a cut (Item.IfPresent)
// leaves where it finds no record, and that a late write (Item.Late)
// applies it: written whole after the cut, alone or in a batch, the
// record is the cut's, and lapses with it. A mark is no record, a first
// write (no Late) ignores it, the shorter of two marks is kept, a late
// write with no mark (or one that lapsed, or one that ends later) writes
// what it was given, and a cut that comes after a late write cuts the
// record as it cuts any. A cut with a Life (Item.Life) outlives its cut
// mark: a late write that lands after the mark lapsed writes nothing,
// also where an earlier late write wrote the cut in the mark's place and
// that cut lapsed; a first write (no Late) still writes. A cut with a
// Life that finds the record leaves its lapsed-cut mark too: a late
// write within the cut leaves the record cut, and one after it writes
// nothing. A write-back (Item.NoLonger) honours the marks as a late write
// does: it writes the cut over a cut mark, and nothing once the cut
// lapsed, whether or not the cut found the record.
//
// The first checks need the short marks still there when they read: a
// run that took longer than the marks' life (a stalled machine) proves
// nothing, and goes again with new keys and marks that live longer.
func CheckCutMark(t *testing.T, s transport.RecordStore) {
	t.Helper()
	const attempts = 3
	for i, scale := 0, time.Duration(1); ; i, scale = i+1, scale*4 {
		if checkCutMark(t, s, scale, fmt.Sprintf("-%d", i), i == attempts-1) {
			return
		}
	}
}

// checkCutMark is one run of CheckCutMark, with its marks' lives scaled by
// scale and its keys ending in suffix. It reports false, having reported
// nothing, if the writes and reads that needed the short marks took
// longer than they live, unless last.
func checkCutMark(t *testing.T, s transport.RecordStore, scale time.Duration, suffix string, last bool) bool {
	t.Helper()
	ctx := context.Background()
	short := 1500 * time.Millisecond * scale
	get := func(k string) string {
		t.Helper()
		v, err := s.GetRecord(ctx, k)
		if errors.Is(err, transport.ErrNotFound) {
			return ""
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(v)
	}
	put := func(items ...transport.Item) {
		t.Helper()
		if err := s.PutRecords(ctx, items...); err != nil {
			t.Fatal(err)
		}
	}
	cut := func(k, v string, ttl time.Duration) transport.Item {
		return transport.Item{Key: k, Value: []byte(v), TTL: ttl, IfPresent: true}
	}
	whole := func(k string, late bool) transport.Item {
		return transport.Item{Key: k, Value: []byte("whole"), TTL: time.Hour, Late: late}
	}
	back := func(k string) transport.Item {
		return transport.Item{Key: k, Value: []byte("whole"), TTL: time.Hour, NoLonger: true}
	}
	key := func(name string) string { return "s:cutmark-" + name + suffix }
	lived := func(k string) transport.Item {
		it := cut(k, "cut", short)
		it.Life = time.Hour
		return it
	}

	// A cut that finds no record: no record, a mark.
	start := time.Now()
	put(cut(key("alone"), "cut", short))
	if v := get(key("alone")); v != "" {
		t.Fatalf("a cut that found no record left a record: %q", v)
	}
	put(cut(key("first"), "cut", short))
	put(whole(key("first"), false))
	// The late write, alone and in a batch (with a plain write and a
	// second late write without a mark).
	put(whole(key("alone"), true))
	put(cut(key("batch"), "cut", short))
	put(transport.Item{Key: key("other"), Value: []byte("other"), TTL: time.Hour}, whole(key("batch"), true), whole(key("nomark"), true))
	// Two marks: the shorter stays, whichever came first.
	put(cut(key("twice-a"), "long", time.Hour))
	put(cut(key("twice-a"), "short", short))
	put(cut(key("twice-b"), "short", short))
	put(cut(key("twice-b"), "long", time.Hour))
	put(whole(key("twice-a"), true), whole(key("twice-b"), true))
	// A mark that ends later than the late write: the write is its own.
	put(cut(key("longer"), "cut", 2*time.Hour))
	put(whole(key("longer"), true))
	// A late write first, then the cut: cut as any record.
	put(whole(key("before"), true))
	put(cut(key("before"), "cut", short))
	// A mark that lapses before the late write.
	put(cut(key("lapsed"), "cut", time.Second*scale))
	// Cuts with a Life, whose marks outlive the cut: the late write
	// written within the cut writes the cut.
	put(lived(key("life")))
	put(lived(key("life-first")))
	put(lived(key("life-written")))
	put(whole(key("life-written"), true))
	// Cuts with a Life that find the record: the record is the cut, which
	// a late write within it leaves as it is.
	put(whole(key("found"), false))
	put(lived(key("found")))
	put(whole(key("found"), true))
	put(whole(key("found-later"), false), whole(key("back-found"), false))
	put(lived(key("found-later")), lived(key("back-found")))
	// Write-backs honour the marks as late writes do.
	put(lived(key("back")))
	put(back(key("back")))
	put(lived(key("back-later")))
	put(back(key("back-found")))

	var wrong []string
	for k, want := range map[string]string{
		"alone": "cut", "first": "whole", "batch": "cut", "other": "other", "nomark": "whole",
		"twice-a": "short", "twice-b": "short", "longer": "whole", "before": "cut",
		"life": "", "life-first": "", "life-written": "cut",
		"found": "cut", "found-later": "cut", "back": "cut", "back-later": "", "back-found": "cut",
	} {
		if v := get(key(k)); v != want {
			wrong = append(wrong, fmt.Sprintf("%s: the record reads %q, want %q", k, v, want))
		}
	}
	if took := time.Since(start); took >= short && !last {
		t.Logf("the cut marks' checks took %v, past the marks' %v: again, with marks that live longer", took.Round(time.Millisecond), short)
		return false
	}
	for _, w := range wrong {
		t.Error(w)
	}
	time.Sleep(2100 * time.Millisecond * scale)
	put(whole(key("lapsed"), true))
	// Past the cuts with a Life: a late write writes nothing, alone or
	// in a batch, also over the lapsed cut an earlier one wrote; a first
	// write writes.
	put(whole(key("life"), true))
	put(whole(key("life-written"), true), whole(key("life-first"), false))
	// Past the cuts that found their records, and those a write-back
	// wrote: neither a late write nor a write-back brings them back.
	put(whole(key("found-later"), true))
	put(whole(key("found"), true), back(key("back")), back(key("back-later")), back(key("back-found")))
	for k, want := range map[string]string{
		"alone": "", "first": "whole", "batch": "", "nomark": "whole",
		"twice-a": "", "twice-b": "", "longer": "whole", "before": "", "lapsed": "whole",
		"life": "", "life-first": "whole", "life-written": "",
		"found": "", "found-later": "", "back": "", "back-later": "", "back-found": "",
	} {
		if v := get(key(k)); v != want {
			t.Errorf("%s, past the short cut: the record reads %q, want %q", k, v, want)
		}
	}
	return true
}

// CheckRetireMark checks that s keeps the retirement mark a retirement
// (Item.Retire) leaves where it finds no record, and that a late write
// (Item.Late) honours it: written after the retirement, alone or in a
// batch, it writes nothing. A retirement deletes a record that is there;
// a mark is no record, a first write (no Late) ignores it, a cut
// (IfPresent) neither brings back the record nor lifts the mark, a late
// write with no mark (or one that lapsed) writes what it was given, and a
// retirement that comes after a late write deletes the record. Where s
// is a transport.RecordTaker, a take (TakeRecord) leaves the mark too,
// for the record's remaining life, which the taker's retirement of it
// (Item.Taken) keeps: a late write after it writes nothing, a first write
// and an add (AddRecord) write. A write-back (Item.NoLonger) honours the
// mark as a late write does.
func CheckRetireMark(t *testing.T, s transport.RecordStore) {
	t.Helper()
	ctx := context.Background()
	const short = 1500 * time.Millisecond
	get := func(k string) string {
		t.Helper()
		v, err := s.GetRecord(ctx, k)
		if errors.Is(err, transport.ErrNotFound) {
			return ""
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(v)
	}
	put := func(items ...transport.Item) {
		t.Helper()
		if err := s.PutRecords(ctx, items...); err != nil {
			t.Fatal(err)
		}
	}
	retire := func(k string, ttl time.Duration) transport.Item {
		return transport.Item{Key: k, TTL: ttl, Retire: true}
	}
	whole := func(k string, late bool) transport.Item {
		return transport.Item{Key: k, Value: []byte("whole"), TTL: time.Hour, Late: late}
	}
	key := func(name string) string { return "s:retiremark-" + name }

	// A retirement that finds a record deletes it; one that finds none
	// leaves no record.
	put(whole(key("there"), false))
	put(retire(key("there"), time.Hour))
	put(retire(key("alone"), time.Hour))
	for _, k := range []string{"there", "alone"} {
		if v := get(key(k)); v != "" {
			t.Fatalf("%s: a retirement left a record: %q", k, v)
		}
	}
	// The late write, alone and in a batch (with a plain write and a
	// second late write without a mark).
	put(whole(key("alone"), true))
	put(retire(key("batch"), time.Hour))
	put(transport.Item{Key: key("other"), Value: []byte("other"), TTL: time.Hour}, whole(key("batch"), true), whole(key("nomark"), true))
	// A write-back honours the mark, alone and in a batch.
	back := func(k string) transport.Item {
		return transport.Item{Key: k, Value: []byte("whole"), TTL: time.Hour, NoLonger: true}
	}
	put(retire(key("back"), time.Hour), retire(key("back-batch"), time.Hour))
	put(back(key("back")))
	put(back(key("back-batch")), back(key("back-nomark")))
	// A first write ignores the mark.
	put(retire(key("first"), time.Hour))
	put(whole(key("first"), false))
	// A cut that finds the mark: no record, and the mark stays.
	put(retire(key("cut"), time.Hour))
	put(transport.Item{Key: key("cut"), Value: []byte("cut"), TTL: time.Minute, IfPresent: true})
	put(whole(key("cut"), true))
	// A late write first, then the retirement.
	put(whole(key("before"), true))
	put(retire(key("before"), time.Hour))
	// A mark that lapses before the late write.
	put(retire(key("lapsed"), time.Second))
	// A take (RecordTaker.TakeRecord) leaves the mark too, for the
	// record's remaining life: a late write after it, alone or in a
	// batch, writes nothing; a first write, or an add, writes.
	taker, _ := s.(transport.RecordTaker)
	take := func(k string, ttl time.Duration) {
		t.Helper()
		put(transport.Item{Key: k, Value: []byte("taken"), TTL: ttl})
		if v, err := taker.TakeRecord(ctx, k); err != nil || string(v) != "taken" {
			t.Fatalf("TakeRecord = %q, %v; want %q", v, err, "taken")
		}
	}
	want := map[string]string{
		"alone": "", "batch": "", "other": "other", "nomark": "whole", "first": "whole", "cut": "", "before": "",
		"back": "", "back-batch": "", "back-nomark": "whole",
	}
	if taker != nil {
		take(key("taken"), time.Hour)
		put(whole(key("taken"), true))
		take(key("taken-batch"), time.Hour)
		put(whole(key("taken-batch"), true), whole(key("taken-other"), true))
		// The taker's retirement of what it took (Item.Taken) keeps the
		// mark.
		take(key("taken-retired"), time.Hour)
		put(transport.Item{Key: key("taken-retired"), TTL: time.Hour, Retire: true, Taken: true})
		put(whole(key("taken-retired"), true))
		take(key("taken-first"), time.Hour)
		put(whole(key("taken-first"), false))
		take(key("taken-add"), time.Hour)
		if ok, err := taker.AddRecord(ctx, whole(key("taken-add"), false)); err != nil || !ok {
			t.Fatalf("AddRecord of a taken key = %t, %v", ok, err)
		}
		// A record taken with little life left: its mark lapses with it.
		take(key("taken-lapsed"), time.Second)
		for k, v := range map[string]string{"taken": "", "taken-batch": "", "taken-retired": "", "taken-other": "whole", "taken-first": "whole", "taken-add": "whole"} {
			want[k] = v
		}
	}

	for k, want := range want {
		if v := get(key(k)); v != want {
			t.Errorf("%s: the record reads %q, want %q", k, v, want)
		}
	}
	time.Sleep(short + 600*time.Millisecond)
	put(whole(key("lapsed"), true))
	if v := get(key("lapsed")); v != "whole" {
		t.Errorf("lapsed: past the mark, the late write reads %q, want %q", v, "whole")
	}
	if taker != nil {
		put(whole(key("taken-lapsed"), true))
		if v := get(key("taken-lapsed")); v != "whole" {
			t.Errorf("taken-lapsed: past the taken record's life, the late write reads %q, want %q", v, "whole")
		}
	}
}
