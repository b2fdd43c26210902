package session_test

import (
	"crypto/aes"
	"testing"

	"github.com/tlsfarm/tlsfarm/session"
)

// TestZeroIDKeyRefused: an all-zero ID key (a secret that was never filled
// in) is a key everyone knows, so anyone could mint IDs the cache takes as
// its own, and send them past the tag check to lookups and the farm's
// store. SetIDKeys refuses it, as ticket.Ring refuses an all-zero ticket
// key, and keeps the keys it had.
func TestZeroIDKeyRefused(t *testing.T) {
	c := newCache(t, nil)
	good := session.IDKey{ID: 1, Key: [32]byte{1}}
	if err := c.SetIDKeys(good); err != nil {
		t.Fatal(err)
	}
	mine := c.NewID()
	if err := c.SetIDKeys(session.IDKey{ID: 2}, good); err == nil {
		// Show what it costs: an ID minted by someone who holds no secret.
		var forged session.ID
		forged[0], forged[1] = 1, 2
		blk, _ := aes.NewCipher(make([]byte, 32))
		var out [16]byte
		blk.Encrypt(out[:], forged[2:18])
		copy(forged[18:], out[:8])
		_, ok := c.CheckID(forged[:])
		t.Fatalf("SetIDKeys took an all-zero key (an ID anyone can mint is accepted: %t)", ok)
	}
	if _, ok := c.CheckID(mine[:]); !ok {
		t.Fatal("a refused SetIDKeys dropped the keys the cache had")
	}
}
