package farm

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// An envelope is how everything the farm sends or stores travels:
//
//	magic     2  "tF"
//	version   1  envelopeVersion
//	type      1  envType
//	key ID    1  the farm secret that sealed it
//	time      8  Unix microseconds when it was sealed
//	sender    8  the sending node's random instance ID
//	farm      1+n  the farm's name, length-prefixed
//	nonce     24 XChaCha20-Poly1305 nonce (random)
//	sealed    the body, encrypted and authenticated, 16-byte tag
//
// Everything before the nonce is authenticated as additional data, together
// with a context the reader supplies and that is not sent (for a stored
// session, its ID: a value moved to another key does not open).
// XChaCha20's 192-bit nonces may be drawn at random for as many messages as a
// farm will ever send under one secret.
const (
	envelopeVersion = 1
	nonceLen        = chacha20poly1305.NonceSizeX
	fixedHeaderLen  = 2 + 1 + 1 + 1 + 8 + 8 + 1
	maxFarmName     = 64
)

// envelopeOverhead is the size of an envelope around an empty body, for a
// farm name of n bytes.
func envelopeOverhead(n int) int { return fixedHeaderLen + n + nonceLen + chacha20poly1305.Overhead }

var magic = [2]byte{'t', 'F'}

// An envType says what an envelope holds: a message on the bus (msg*), a
// value in the store (val*), or, for the ticket key set, either.
type envType uint8

const (
	msgSessions     envType = 1 + iota // body: sessions, for peers to insert
	msgRevoke                          // body: revoked chains
	valRecord                          // body: one session record; context: its session ID
	valTombstone                       // body: one revoked chain
	msgKeys                            // body: a ticket key set (announced, and stored)
	msgCut                             // body: sessions cut to their grace, or retired
	msgResend                          // body: empty, or resendHeldOnly; asks peers to write and publish again the retirements and cuts they keep
	msgTally                           // body: counts of the messages the sender published, by when it sealed them (see tally.go)
	valChild                           // body: a parent's live child's session ID (store-only); context: the parent's ID
	valRevoked                         // body: the chain of a revoked session and its start; context: the session's ID
	valChainRevoked                    // body: one revoked chain (as valTombstone); context: the chain, 8 bytes big-endian
	msgRevokeIDs                       // body: session IDs revoked while no reachable node knew them (see revokeid.go)
	valRevokedID                       // body: one such session ID (store-only, a member of revokedIDsKey's set)
	msgMark                            // body: a delivery mark request and the answers to peers' (see peermark.go)
)

func (t envType) String() string {
	switch t {
	case msgSessions:
		return "sessions"
	case msgRevoke:
		return "revoke"
	case valRecord:
		return "stored"
	case valTombstone:
		return "tombstone"
	case msgKeys:
		return "keys"
	case msgCut:
		return "cut"
	case msgResend:
		return "resend"
	case msgTally:
		return "tally"
	case valChild:
		return "child"
	case valRevoked:
		return "revoked"
	case valChainRevoked:
		return "chain-revoked"
	case msgRevokeIDs:
		return "revoke-ids"
	case valRevokedID:
		return "revoked-id"
	case msgMark:
		return "mark"
	}
	return fmt.Sprintf("envType(%d)", uint8(t))
}

// header is the authenticated, unencrypted part of an envelope.
type header struct {
	typ    envType
	keyID  uint8
	time   time.Time // microsecond precision
	sender uint64
	farm   string
}

// A rejectReason says why a received message was dropped.
type rejectReason uint8

const (
	rejectMalformed rejectReason = iota // not an envelope, or a truncated one
	rejectVersion                       // an envelope version this node does not read
	rejectOtherFarm                     // sealed for another farm
	rejectTooOld                        // older than its type may be (see maxAgeFor; most: Config.MaxAge)
	rejectFuture                        // from further in the future than Config.MaxSkew
	rejectSeal                          // unknown key, or failed authentication: forged or tampered
	rejectBody                          // authentic, but its body does not decode
	rejectType                          // authentic, but of a type not expected here
	rejectSize                          // longer than transport.MaxMessageSize
	numRejections
)

func (r rejectReason) String() string {
	switch r {
	case rejectMalformed:
		return "malformed"
	case rejectVersion:
		return "version"
	case rejectOtherFarm:
		return "other_farm"
	case rejectTooOld:
		return "too_old"
	case rejectFuture:
		return "future"
	case rejectSeal:
		return "seal"
	case rejectBody:
		return "body"
	case rejectType:
		return "type"
	case rejectSize:
		return "size"
	}
	return fmt.Sprintf("rejectReason(%d)", uint8(r))
}

// errRejected carries the reason an envelope was refused.
type errRejected struct {
	why    rejectReason
	detail string
}

func (e *errRejected) Error() string {
	if e.detail == "" {
		return "farm: message rejected: " + e.why.String()
	}
	return "farm: message rejected: " + e.why.String() + ": " + e.detail
}

func reject(why rejectReason, detail string) error { return &errRejected{why, detail} }

// errTooLarge is preallocated: refusing an oversize message allocates
// nothing.
var errTooLarge error = &errRejected{why: rejectSize}

// rejection returns the reason of an error returned by open.
func rejection(err error) rejectReason {
	var r *errRejected
	if errors.As(err, &r) {
		return r.why
	}
	return rejectMalformed
}

// seal appends to dst the envelope of body, sealed with the current key.
func (k *farmKeys) seal(dst []byte, h header, body, context []byte) []byte {
	dst = slices.Grow(dst, envelopeOverhead(len(h.farm))+len(body)) // one allocation, not one per append
	start := len(dst)
	dst = append(dst, magic[0], magic[1], envelopeVersion, byte(h.typ), k.current)
	dst = binary.BigEndian.AppendUint64(dst, uint64(h.time.UnixMicro()))
	dst = binary.BigEndian.AppendUint64(dst, h.sender)
	dst = append(dst, byte(len(h.farm)))
	dst = append(dst, h.farm...)
	hdrEnd := len(dst)
	dst = append(dst, make([]byte, nonceLen)...)
	nonce := dst[hdrEnd:]
	rand.Read(nonce)
	ad := adFor(dst[start:hdrEnd], context)
	return k.aead[k.current].Seal(dst, nonce, body, ad)
}

// adFor returns the additional data: the header, then the reader-supplied
// context.
func adFor(hdr, context []byte) []byte {
	if len(context) == 0 {
		return hdr
	}
	ad := make([]byte, 0, len(hdr)+len(context))
	return append(append(ad, hdr...), context...)
}

// parseHeader reads the header of msg and returns it with the offset of the
// nonce.
func parseHeader(msg []byte) (header, int, error) {
	if len(msg) > transport.MaxMessageSize {
		return header{}, 0, errTooLarge
	}
	return parseHeaderAnySize(msg)
}

// parseHeaderAnySize is parseHeader without the bound on the message's
// size, for envelopes that did not come from a transport (see openLocal).
func parseHeaderAnySize(msg []byte) (header, int, error) {
	var h header
	if len(msg) < fixedHeaderLen || msg[0] != magic[0] || msg[1] != magic[1] {
		return h, 0, reject(rejectMalformed, "")
	}
	if msg[2] != envelopeVersion {
		return h, 0, reject(rejectVersion, fmt.Sprint(msg[2]))
	}
	h.typ = envType(msg[3])
	h.keyID = msg[4]
	h.time = time.UnixMicro(int64(binary.BigEndian.Uint64(msg[5:])))
	h.sender = binary.BigEndian.Uint64(msg[13:])
	n := int(msg[21])
	off := fixedHeaderLen + n
	if len(msg) < off+nonceLen+chacha20poly1305.Overhead {
		return h, 0, reject(rejectMalformed, "truncated")
	}
	h.farm = string(msg[fixedHeaderLen:off])
	return h, off, nil
}

// open checks and opens an envelope: it must be for farm, of type want, at
// most maxAge old and at most maxSkew in the future of now, and
// authenticate under one of the farm's keys with context. It returns the
// header and the body (a new slice).
func (k *farmKeys) open(msg []byte, farm string, want envType, context []byte, now time.Time, maxAge, maxSkew time.Duration) (header, []byte, error) {
	h, off, err := parseHeader(msg)
	if err != nil {
		return h, nil, err
	}
	body, err := k.openParsed(msg, h, off, farm, want, context, now, maxAge, maxSkew, nil)
	return h, body, err
}

// openLocal is open for an envelope the node sealed into a file of its
// own (the revocation, lifecycle and sent files, and the frames of the
// revocation and sent journals): the same checks, but not transport.MaxMessageSize, which bounds
// what a transport carries and what a peer may make a node decrypt. A
// lifecycle file holding full backlogs at the default QueueSize is over
// 2 MB, and refusing it would fail Join after the long outage that filled
// them. The file's size is bounded by what the node writes into it, and
// whoever can write the file can do worse than make it large.
func (k *farmKeys) openLocal(raw []byte, farm string, want envType, context []byte, now time.Time) (header, []byte, error) {
	h, off, err := parseHeaderAnySize(raw)
	if err != nil {
		return h, nil, err
	}
	body, err := k.openParsed(raw, h, off, farm, want, context, now, 0, 0, nil)
	return h, body, err
}

// openParsed is open for a message whose header parseHeader has read. The
// body is appended to dst; a caller that owns msg may pass
// msg[off+nonceLen:off+nonceLen] to decrypt in place, without allocating
// (msg is then no longer an envelope).
func (k *farmKeys) openParsed(msg []byte, h header, off int, farm string, want envType, context []byte, now time.Time, maxAge, maxSkew time.Duration, dst []byte) ([]byte, error) {
	if h.farm != farm {
		return nil, reject(rejectOtherFarm, "")
	}
	if maxAge > 0 && now.Sub(h.time) > maxAge {
		return nil, reject(rejectTooOld, now.Sub(h.time).String())
	}
	if maxSkew > 0 && h.time.Sub(now) > maxSkew {
		return nil, reject(rejectFuture, h.time.Sub(now).String())
	}
	aead := k.aead[h.keyID]
	if aead == nil {
		return nil, reject(rejectSeal, "unknown key")
	}
	nonce := msg[off : off+nonceLen]
	body, err := aead.Open(dst, nonce, msg[off+nonceLen:], adFor(msg[:off], context))
	if err != nil {
		return nil, reject(rejectSeal, "")
	}
	// The type is checked only once authentic: a forger cannot learn which
	// types a node takes.
	if h.typ != want && want != 0 {
		return nil, reject(rejectType, h.typ.String())
	}
	return body, nil
}

// A sessionItem is one session in a msgSessions body.
type sessionItem struct {
	id  session.ID
	rec session.Record
}

// appendSessions appends the body of a msgSessions message:
// repeated { id (26) | record length (4) | record }.
func appendSessions(b []byte, items []sessionItem) ([]byte, error) {
	need := 0
	for _, it := range items {
		need += session.IDLen + 4 + recordFixedLen + len(it.rec.ServerName) + len(it.rec.State)
	}
	b = slices.Grow(b, need) // one allocation, not one per append
	for _, it := range items {
		b = append(b, it.id[:]...)
		at := len(b)
		b = append(b, 0, 0, 0, 0)
		var err error
		if b, err = it.rec.AppendBinary(b); err != nil {
			return nil, err
		}
		binary.BigEndian.PutUint32(b[at:], uint32(len(b)-at-4))
	}
	return b, nil
}

// parseSessions decodes a msgSessions body. Records alias body.
func parseSessions(body []byte) ([]sessionItem, error) {
	return appendParsedSessions(nil, body)
}

// appendParsedSessions is parseSessions appending to out, which a caller
// may give room on its stack so that a small batch costs no allocation.
func appendParsedSessions(out []sessionItem, body []byte) ([]sessionItem, error) {
	out = slices.Grow(out, countSessions(body))
	for len(body) > 0 {
		if len(body) < session.IDLen+4 {
			return nil, errors.New("session item truncated")
		}
		var it sessionItem
		copy(it.id[:], body)
		n := binary.BigEndian.Uint32(body[session.IDLen:])
		body = body[session.IDLen+4:]
		if uint64(n) > uint64(len(body)) {
			return nil, errors.New("session record truncated")
		}
		if err := it.rec.UnmarshalBinary(body[:n]); err != nil {
			return nil, err
		}
		body = body[n:]
		out = append(out, it)
	}
	return out, nil
}

// countSessions returns how many items body's length prefixes describe, so
// that appendParsedSessions allocates its result at most once; it stops at the first item
// that does not fit, which parseSessions then reports.
func countSessions(body []byte) int {
	n := 0
	for len(body) >= session.IDLen+4 {
		l := binary.BigEndian.Uint32(body[session.IDLen:])
		body = body[session.IDLen+4:]
		if uint64(l) > uint64(len(body)) {
			break
		}
		body = body[l:]
		n++
	}
	return n
}

// A revocation is one revoked chain, until it could no longer resume.
type revocation struct {
	chain uint64
	until time.Time
	// start is the chain's start, where the revoker knows it (zero if
	// not). It is never sent: it goes to the store only in the marker
	// of a revoked session (see revokedMark).
	start time.Time
}

const revocationLen = 16

// appendRevocations appends repeated { chain (8) | until (8, Unix ns) }.
func appendRevocations(b []byte, rs []revocation) []byte {
	for _, r := range rs {
		b = binary.BigEndian.AppendUint64(b, r.chain)
		b = binary.BigEndian.AppendUint64(b, uint64(r.until.UnixNano()))
	}
	return b
}

func parseRevocations(body []byte) ([]revocation, error) {
	if len(body) == 0 || len(body)%revocationLen != 0 {
		return nil, errors.New("revocation body has a bad length")
	}
	out := make([]revocation, 0, len(body)/revocationLen)
	for ; len(body) > 0; body = body[revocationLen:] {
		out = append(out, revocation{
			chain: binary.BigEndian.Uint64(body),
			until: time.Unix(0, int64(binary.BigEndian.Uint64(body[8:]))),
		})
	}
	return out, nil
}

// recordFixedLen is at least the length of a session record's fixed fields
// (see session.Record.AppendBinary): what appendSessions reserves for each
// record beyond its server name and state.
const recordFixedLen = 64

// encodeRecord returns rec's binary form (session.Record.AppendBinary) in a
// buffer allocated once, at its size.
func encodeRecord(rec *session.Record) ([]byte, error) {
	return rec.AppendBinary(make([]byte, 0, recordFixedLen+len(rec.ServerName)+len(rec.State)))
}
