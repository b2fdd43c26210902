package session

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// recordVersion is the first byte of a record's binary form.
const recordVersion = 1

// maxServerNameLen is the longest server name a record's binary form holds
// (the DNS limit).
const maxServerNameLen = 253

// recordHeaderLen is version(1) + expires(8) + chain start(8) + chain(8) +
// parent (IDLen) + server name length(1) + state length(4).
const recordHeaderLen = 1 + 8 + 8 + 8 + IDLen + 1 + 4

// AppendBinary appends the binary form of r to b, for storage or transport
// by a plugin. The form holds r.State, a master secret: a plugin must
// encrypt it before it leaves the process. An Expires or ChainStart that
// Unix nanoseconds cannot hold (before 1678, after 2262) is written as the
// nearest time they hold.
func (r Record) AppendBinary(b []byte) ([]byte, error) {
	if len(r.ServerName) > maxServerNameLen {
		return b, fmt.Errorf("session: server name of %d bytes exceeds %d", len(r.ServerName), maxServerNameLen)
	}
	if uint64(len(r.State)) > 1<<32-1 {
		return b, errors.New("session: state too long for a record")
	}
	b = append(b, recordVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(unixNano(r.Expires)))
	b = binary.BigEndian.AppendUint64(b, uint64(unixNano(r.ChainStart)))
	b = binary.BigEndian.AppendUint64(b, r.Chain)
	b = append(b, r.Parent[:]...)
	b = append(b, byte(len(r.ServerName)))
	b = append(b, r.ServerName...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.State)))
	return append(b, r.State...), nil
}

// UnmarshalBinary parses the binary form made by AppendBinary. r.State
// aliases data.
func (r *Record) UnmarshalBinary(data []byte) error {
	if len(data) < recordHeaderLen {
		return errors.New("session: record too short")
	}
	if data[0] != recordVersion {
		return fmt.Errorf("session: unknown record version %d", data[0])
	}
	expires := int64(binary.BigEndian.Uint64(data[1:]))
	start := int64(binary.BigEndian.Uint64(data[9:]))
	chain := binary.BigEndian.Uint64(data[17:])
	parent := ID(data[25 : 25+IDLen])
	n := int(data[25+IDLen])
	rest := data[26+IDLen:]
	if n > maxServerNameLen || len(rest) < n+4 {
		return errors.New("session: record server name truncated")
	}
	name := string(rest[:n])
	rest = rest[n:]
	sl := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	if uint64(len(rest)) != uint64(sl) {
		return fmt.Errorf("session: record state is %d bytes, header says %d", len(rest), sl)
	}
	*r = Record{
		State:      rest,
		ServerName: name,
		Expires:    time.Unix(0, expires),
		Chain:      chain,
		ChainStart: time.Unix(0, start),
		Parent:     parent,
	}
	return nil
}

// A Record is what the cache holds for one session.
type Record struct {
	// State is the session serialized by tls.SessionState.Bytes. A record
	// handed out by the cache (in an Event, or by Remove, Cut or Snapshot)
	// shares State with the cache: it must not be modified.
	State []byte

	// ServerName is the server name (SNI) the session was issued under, in
	// lower case; "" if the client sent none.
	ServerName string

	// Expires is when the session stops being resumable.
	Expires time.Time

	// Chain identifies the resumption chain of the session: a full handshake
	// starts a chain and every ticket issued by resuming it continues it.
	Chain uint64

	// ChainStart is when the full handshake that began the chain happened.
	ChainStart time.Time

	// Parent is the session this one was resumed from, if known (zero
	// otherwise). It is not kept in the cache: Insert uses it to cut the
	// parent to Config.ResumeGrace, as the handshake that resumed it did on
	// the server where it happened, so that peers too hold about one
	// session per active client. The grace is counted from when this
	// session's ID was issued (Cache.IssuedAt), not from the insert, so
	// that a record delivered late cannot lengthen it. It is set in
	// EventNew records.
	Parent ID
}
