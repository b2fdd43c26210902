package session_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

// fuzzCache returns a cache whose one ID key has ID 3 and key {7}, and that
// key as a block cipher, for computing tags independently of the cache.
func fuzzCache(f *testing.F) (*session.Cache, cipher.Block) {
	key := [32]byte{7}
	c, err := session.New(&session.Config{SweepInterval: -1})
	if err != nil {
		f.Fatal(err)
	}
	if err := c.SetIDKeys(session.IDKey{ID: 3, Key: key}); err != nil {
		f.Fatal(err)
	}
	block, err := aes.NewCipher(key[:])
	if err != nil {
		f.Fatal(err)
	}
	return c, block
}

// FuzzCheckID feeds arbitrary identities to the ID check and to
// UnwrapSession: neither may panic, and the check must agree with an
// independent computation of the tag (AES-256 of the random part).
func FuzzCheckID(f *testing.F) {
	c, block := fuzzCache(f)
	good := c.NewID()
	f.Add(good[:])
	f.Add([]byte{})
	f.Add(good[:session.IDLen-1])
	f.Add(bytes.Repeat([]byte{1}, session.IDLen))
	f.Add(append(append([]byte{3}, good[:]...), 0)) // a carried ticket's form
	f.Fuzz(func(t *testing.T, b []byte) {
		want := false
		named := b // the ID b stands for: itself, or a carried ticket's
		if len(b) >= session.IDLen+2 && b[0] == 3 {
			named = b[1 : 1+session.IDLen]
		}
		if len(named) == session.IDLen && named[0] == 1 && named[1] == 3 {
			var out [16]byte
			block.Encrypt(out[:], named[2:18])
			want = bytes.Equal(out[:8], named[18:])
		}
		id, ok := c.CheckID(b)
		if ok != want {
			t.Fatalf("CheckID(%x) = %t, want %t", b, ok, want)
		}
		if ok && !bytes.Equal(id[:], named) {
			t.Fatalf("CheckID(%x) returned %v", b, id)
		}
		// IssuedAt decodes exactly what CheckID accepts, without panicking.
		if len(b) == session.IDLen {
			if _, iok := c.IssuedAt(session.ID(b)); iok != ok {
				t.Fatalf("IssuedAt(%x) reports %t, CheckID %t", b, iok, ok)
			}
		}
		if ss, err := unwrap(c, b, tls.ConnectionState{}); ss != nil || err != nil {
			t.Fatalf("UnwrapSession(%x) = %v, %v on an empty cache", b, ss, err)
		}
	})
}

// FuzzReissuedTicket checks the decoder of reissued tickets: no panic, and
// whatever it accepts stands for the one ID ever reissued under the key
// (the ID and the key are fixed, so the seeds are valid in every fuzzing
// process; another valid ticket would be a forgery of AES-GCM).
func FuzzReissuedTicket(f *testing.F) {
	c, block := fuzzCache(f)
	var good session.ID
	good[0], good[1] = 1, 3
	copy(good[2:18], "sixteen bytes!!!")
	var tag [16]byte
	block.Encrypt(tag[:], good[2:18])
	copy(good[18:], tag[:8])
	if _, ok := c.CheckID(good[:]); !ok {
		f.Fatal("the test's ID does not check")
	}
	for range 3 {
		t := session.Reissue(c, good)
		f.Add(t)
		f.Add(t[:len(t)-1])
	}
	f.Add(bytes.Repeat([]byte{2}, len(session.Reissue(c, good))))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, ok := c.CheckID(b)
		if ok && len(b) != session.IDLen && id != good {
			t.Fatalf("CheckID(%x) = %v, an ID never reissued", b, id)
		}
	})
}

// FuzzParseID checks that ParseID never panics and round-trips.
func FuzzParseID(f *testing.F) {
	var id session.ID
	id[0] = 1
	f.Add(id.String())
	f.Add("")
	f.Add("01zz")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := session.ParseID(s)
		if err == nil && id.String() != s && !bytes.EqualFold([]byte(id.String()), []byte(s)) {
			t.Fatalf("ParseID(%q) = %v", s, id)
		}
	})
}

// FuzzRecord checks the record decoder: no panic, and whatever it accepts
// re-encodes to the same bytes.
func FuzzRecord(f *testing.F) {
	r := session.Record{State: []byte("state"), ServerName: "localhost", Expires: time.Unix(1e9, 5), Chain: 9, ChainStart: time.Unix(1e9, 0)}
	b, _ := r.AppendBinary(nil)
	f.Add(b)
	f.Add([]byte{1})
	f.Add(b[:len(b)-1])
	f.Fuzz(func(t *testing.T, data []byte) {
		var r session.Record
		if err := r.UnmarshalBinary(data); err != nil {
			return
		}
		again, err := r.AppendBinary(nil)
		if err != nil {
			t.Fatalf("accepted record does not re-encode: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("round trip changed the record:\n%x\n%x", data, again)
		}
	})
}
