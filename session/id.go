package session

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"
)

// IDLen is the length in bytes of a session ID, and so of the tickets and
// PSK identities the cache issues in stateful mode, except the 46-byte
// reissued tickets of TLS 1.2 resumptions (see Config.ResumeGrace).
//
// An ID is laid out as
//
//	byte  0      format version (1)
//	byte  1      key ID of the IDKey that authenticated it
//	bytes 2..17  the body: AES-256 under a key derived from the IDKey of
//	             the issue time (Unix milliseconds, 8 bytes big-endian)
//	             and 64 random bits from crypto/rand
//	bytes 18..25 tag: the first 8 bytes of AES-256(key, body)
//
// The tag makes IDs self-authenticating: a forged, truncated or altered ID is
// rejected by one AES block operation, before any lookup. The body looks
// random to whoever lacks the key, so the ID shows no issue time on the
// wire (TLS 1.3 obfuscates ticket ages for the same reason); a holder of
// the key reads it with one more block operation (Cache.IssuedAt).
const IDLen = 26

const (
	idVersion = 1
	idRandLen = 16
	idTagOff  = 2 + idRandLen
)

// An ID identifies one cached session. It is the opaque ticket (TLS 1.2) or
// PSK identity (TLS 1.3) that a client presents to resume. IDs are comparable
// and can be used as map keys.
type ID [IDLen]byte

// String returns the ID in lower-case hexadecimal.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// ParseID decodes the hexadecimal form produced by ID.String. It checks the
// length and the format version only; use Cache.CheckID to authenticate the
// result.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*IDLen {
		return id, fmt.Errorf("session: ID must be %d hex digits, got %d characters", 2*IDLen, len(s))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return ID{}, fmt.Errorf("session: ID is not hexadecimal: %w", err)
	}
	if id[0] != idVersion {
		return ID{}, fmt.Errorf("session: unknown ID format version %d", id[0])
	}
	return id, nil
}

// An IDKey authenticates session IDs. Every node of a farm must hold the same
// keys (a farm derives them from its secret) so that each node accepts the IDs
// minted by the others. The ID field is carried in every ID so that keys can
// be rotated: a cache mints with its first key and accepts all of them.
type IDKey struct {
	ID  uint8    // carried in byte 1 of every ID the key authenticates
	Key [32]byte // an AES-256 key
}

// A reissued ticket stands for an ID without being equal to it: a TLS 1.2
// handshake that resumed a session keeps its master secret, so instead of a
// successor (a new session to store and share) the client is given a fresh
// encryption of the same ID. Two tickets of one session look unrelated on the
// wire, as crypto/tls's own reissued tickets do. The layout is
//
//	byte  0       format version (2)
//	byte  1       key ID of the IDKey that authenticated the ID
//	bytes 2..13   a random nonce
//	bytes 14..45  the ID's 16-byte body sealed with AES-256-GCM under a
//	              key derived from that IDKey (the first two bytes are
//	              additional data)
//
// Any node holding the farm's ID keys opens it, so it resumes farm-wide like
// the ID it stands for; a forged one fails the GCM tag, before any lookup.
const (
	reissuedVersion  = 2
	reissuedNonceLen = 12
	reissuedLen      = 2 + reissuedNonceLen + idRandLen + 16
)

// reissueInfo is the HKDF info that derives the key sealing reissued tickets
// from an IDKey, so that the two uses of one key never meet.
const reissueInfo = "tlsfarm session reissued ticket v2"

// issuedInfo is the HKDF info that derives the key encrypting an ID's issue
// time into its body from an IDKey.
const issuedInfo = "tlsfarm session ID issue time v1"

// idKeys is an immutable set of ID keys, replaced as a whole on rotation.
type idKeys struct {
	mint   uint8
	blocks [256]cipher.Block
	seals  [256]cipher.AEAD  // for reissued tickets, one per key
	times  [256]cipher.Block // for the issue time in an ID's body, one per key
}

var errNoIDKeys = errors.New("session: at least one ID key is required")

func newIDKeys(keys []IDKey) (*idKeys, error) {
	if len(keys) == 0 {
		return nil, errNoIDKeys
	}
	k := &idKeys{mint: keys[0].ID}
	for _, key := range keys {
		if k.blocks[key.ID] != nil {
			return nil, fmt.Errorf("session: ID key %d given twice", key.ID)
		}
		if key.Key == ([32]byte{}) {
			// A key everyone knows: anyone could mint IDs.
			return nil, fmt.Errorf("session: ID key %d is all zeros", key.ID)
		}
		b, err := aes.NewCipher(key.Key[:])
		if err != nil {
			return nil, fmt.Errorf("session: ID key %d: %w", key.ID, err)
		}
		k.blocks[key.ID] = b
		rk, err := hkdf.Key(sha256.New, key.Key[:], nil, reissueInfo, 32)
		if err != nil {
			return nil, fmt.Errorf("session: ID key %d: %w", key.ID, err)
		}
		rb, err := aes.NewCipher(rk)
		if err != nil {
			return nil, fmt.Errorf("session: ID key %d: %w", key.ID, err)
		}
		if k.seals[key.ID], err = cipher.NewGCM(rb); err != nil {
			return nil, fmt.Errorf("session: ID key %d: %w", key.ID, err)
		}
		tk, err := hkdf.Key(sha256.New, key.Key[:], nil, issuedInfo, 32)
		if err != nil {
			return nil, fmt.Errorf("session: ID key %d: %w", key.ID, err)
		}
		if k.times[key.ID], err = aes.NewCipher(tk); err != nil {
			return nil, fmt.Errorf("session: ID key %d: %w", key.ID, err)
		}
	}
	return k, nil
}

// randomIDKey returns a key for a cache that was given none: its IDs are then
// valid on this process only.
func randomIDKey() IDKey {
	var k IDKey
	rand.Read(k.Key[:])
	return k
}

// newID mints a fresh ID issued at now under the minting key.
func (k *idKeys) newID(now time.Time) ID {
	var id ID
	id[0] = idVersion
	id[1] = k.mint
	body := blockPool.Get().(*[aes.BlockSize]byte)
	binary.BigEndian.PutUint64(body[:8], uint64(now.UnixMilli()))
	rand.Read(body[8:])
	k.times[k.mint].Encrypt(body[:], body[:])
	copy(id[2:idTagOff], body[:])
	blockPool.Put(body)
	k.tag(k.blocks[k.mint], &id)
	return id
}

// issuedAt decrypts the issue time from the body of id, which one of the
// keys authenticated.
func (k *idKeys) issuedAt(id *ID) time.Time {
	body := blockPool.Get().(*[aes.BlockSize]byte)
	copy(body[:], id[2:idTagOff]) // in place, so that id does not escape (see check)
	k.times[id[1]].Decrypt(body[:], body[:])
	ms := int64(binary.BigEndian.Uint64(body[:8]))
	blockPool.Put(body)
	return time.UnixMilli(ms)
}

// tag writes the tag of id into its last 8 bytes.
func (k *idKeys) tag(b cipher.Block, id *ID) {
	out := blockPool.Get().(*[aes.BlockSize]byte)
	copy(out[:], id[2:idTagOff]) // in place, so that id does not escape (see check)
	b.Encrypt(out[:], out[:])
	copy(id[idTagOff:], out[:IDLen-idTagOff])
	blockPool.Put(out)
}

// blockPool holds scratch blocks for AES output: a buffer passed to the
// cipher.Block interface escapes, and a fresh one per call would be a heap
// allocation on every ID check.
var blockPool = sync.Pool{New: func() any { return new([aes.BlockSize]byte) }}

// checkPooled is check with a scratch block from blockPool.
func (k *idKeys) checkPooled(b []byte) bool {
	out := blockPool.Get().(*[aes.BlockSize]byte)
	ok := k.check(b, out)
	blockPool.Put(out)
	return ok
}

// check reports whether b is a well-formed ID authenticated by one of the
// keys. out is scratch space.
func (k *idKeys) check(b []byte, out *[aes.BlockSize]byte) bool {
	if len(b) != IDLen || b[0] != idVersion {
		return false
	}
	blk := k.blocks[b[1]]
	if blk == nil {
		return false
	}
	// In place in out: b passed to the cipher.Block interface would escape,
	// and so would every caller's ID, one heap allocation per Insert.
	copy(out[:], b[2:idTagOff])
	blk.Encrypt(out[:], out[:])
	// One 64-bit comparison: constant time with respect to where the tags differ.
	return binary.LittleEndian.Uint64(out[:8])^binary.LittleEndian.Uint64(b[idTagOff:]) == 0
}

// reissue returns a fresh ticket that stands for id, or nil if the key that
// authenticated id is no longer held.
func (k *idKeys) reissue(id *ID) []byte {
	a := k.seals[id[1]]
	if a == nil {
		return nil
	}
	t := make([]byte, 2+reissuedNonceLen, reissuedLen)
	t[0], t[1] = reissuedVersion, id[1]
	rand.Read(t[2:])
	return a.Seal(t, t[2:], id[2:idTagOff], t[:2])
}

// openReissued reports whether b is a ticket reissued under one of the keys,
// and if so writes the ID it stands for into id. out is scratch space.
func (k *idKeys) openReissued(b []byte, id *ID, out *[aes.BlockSize]byte) bool {
	if len(b) != reissuedLen || b[0] != reissuedVersion {
		return false
	}
	a := k.seals[b[1]]
	if a == nil {
		return false
	}
	if _, err := a.Open(out[:0], b[2:2+reissuedNonceLen], b[2+reissuedNonceLen:], b[:2]); err != nil {
		return false
	}
	id[0], id[1] = idVersion, b[1]
	copy(id[2:idTagOff], out[:])
	k.tag(k.blocks[b[1]], id)
	return true
}

// SetIDKeys replaces the ID keys: the first mints new IDs, all verify. IDs
// minted under a key that is no longer in the set stop resuming. It
// returns an error, and changes nothing, if keys is empty, or if a key ID
// appears twice or a key is all zeros.
func (c *Cache) SetIDKeys(keys ...IDKey) error {
	k, err := newIDKeys(keys)
	if err != nil {
		return err
	}
	c.keys.Store(k)
	return nil
}

// NewID mints a fresh authenticated session ID, issued now (Config.Now).
func (c *Cache) NewID() ID { return c.keys.Load().newID(c.cfg.Now()) }

// IssuedAt returns the time id was minted, as the minting cache's clock
// (its Config.Now) read it, to the millisecond. Any cache holding the ID key
// that authenticated id can read it, with no lookup and whether or not it
// holds the session; on the wire the time is encrypted. It reports false if
// id is not authenticated by one of the cache's ID keys. An ID minted
// before IDs carried their issue time yields an arbitrary time.
func (c *Cache) IssuedAt(id ID) (time.Time, bool) {
	k := c.keys.Load()
	if !k.checkPooled(id[:]) {
		return time.Time{}, false
	}
	return k.issuedAt(&id), true
}

// TicketIssuedAt returns when the ticket identity, which resumed ss, was
// issued, as finely as the cache knows it: to the millisecond for a session
// ID (see IssuedAt), to the nanosecond for a stateless ticket bound by the
// cache (its binding, in ss.Extra, records it). ss is the session that the
// config's UnwrapSession returned for identity. It reports false when the
// cache cannot tell (a ticket issued by a server without this glue, an ID
// whose key is no longer held, a ticket reissued for an ID); the caller then
// has crypto/tls's issue time, in whole seconds. The time is never later
// than the moment the ticket was issued, by the issuing cache's clock
// (Config.Now): the ID's milliseconds are truncated, and the binding is
// written before the ticket is sealed.
func (c *Cache) TicketIssuedAt(identity []byte, ss *tls.SessionState) (time.Time, bool) {
	if len(identity) == IDLen && identity[0] == idVersion {
		return c.IssuedAt(ID(identity))
	}
	if len(identity) >= carriedMin && identity[0] == carriedVersion {
		// Or a stateless ticket whose first byte is the version's by
		// chance: its binding says.
		if t, ok := c.IssuedAt(ID(identity[1 : 1+IDLen])); ok {
			return t, true
		}
	}
	if ss == nil {
		return time.Time{}, false
	}
	if _, _, _, issued, _, ok := findBinding(ss.Extra); ok && issued > 0 {
		return time.Unix(0, issued), true
	}
	return time.Time{}, false
}

// CheckID reports whether b is an ID minted under one of the cache's ID
// keys, a ticket the cache reissued for one (see Config.ResumeGrace), or a
// carried ticket for one (see SetCarry), and returns the ID. It costs one
// AES block operation (two, and a GCM open, for a reissued ticket) and no
// lookup; a carried ticket's sealed part is not opened.
func (c *Cache) CheckID(b []byte) (ID, bool) {
	k := c.keys.Load()
	if len(b) >= carriedMin && b[0] == carriedVersion {
		b = b[1 : 1+IDLen]
	}
	if len(b) == reissuedLen {
		var id ID
		out := blockPool.Get().(*[aes.BlockSize]byte)
		ok := k.openReissued(b, &id, out)
		blockPool.Put(out)
		return id, ok
	}
	if !k.checkPooled(b) {
		return ID{}, false
	}
	return ID(b), true
}
