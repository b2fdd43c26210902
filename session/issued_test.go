package session_test

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestIssuedAt: any cache holding the ID key reads an ID's issue time, to
// the millisecond of the minting cache's clock, also through a reissued
// ticket; a cache without the key cannot; and the time is not visible in
// the ID.
func TestIssuedAt(t *testing.T) {
	at := time.Date(2026, 12, 3, 17, 0, 0, 123456789, time.UTC)
	mk := func(key byte, now func() time.Time) *session.Cache {
		c, err := session.New(&session.Config{SweepInterval: -1, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.SetIDKeys(session.IDKey{ID: 3, Key: [32]byte{key}}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	a := mk(7, func() time.Time { return at })
	b := mk(7, time.Now)
	other := mk(8, time.Now)
	id, id2 := a.NewID(), a.NewID()
	if id == id2 {
		t.Fatal("two IDs minted in one millisecond are equal")
	}
	for _, c := range []*session.Cache{a, b} {
		got, ok := c.IssuedAt(id)
		if !ok || !got.Equal(at.Truncate(time.Millisecond)) {
			t.Fatalf("IssuedAt = %v, %t; want %v", got, ok, at.Truncate(time.Millisecond))
		}
	}
	if _, ok := other.IssuedAt(id); ok {
		t.Fatal("a cache without the ID key read the issue time")
	}
	forged := id
	forged[5] ^= 1
	if _, ok := b.IssuedAt(forged); ok {
		t.Fatal("IssuedAt accepted an altered ID")
	}
	// A reissued ticket stands for the ID: its age is the ID's.
	rid, ok := b.CheckID(session.Reissue(a, id))
	if !ok || rid != id {
		t.Fatal("the reissued ticket does not check")
	}
	if got, _ := b.IssuedAt(rid); !got.Equal(at.Truncate(time.Millisecond)) {
		t.Fatalf("IssuedAt(reissued) = %v", got)
	}
	// The body is encrypted: the time in milliseconds appears nowhere in it.
	var ms [8]byte
	binary.BigEndian.PutUint64(ms[:], uint64(at.UnixMilli()))
	if bytes.Contains(id[:], ms[2:6]) || bytes.Equal(id[2:10], id2[2:10]) {
		t.Fatalf("the issue time shows in the ID: %v, %v", id, id2)
	}
}
