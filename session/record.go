package session

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// recordVersion is the first byte of a record's binary form.
const recordVersion = 1

// MaxServerNameLen is the longest server name a record's binary form holds
// (the DNS limit).
const MaxServerNameLen = 253

// recordHeaderLen is version(1) + expires(8) + chain start(8) + chain(8) +
// parent (IDLen) + server name length(1) + state length(4).
const recordHeaderLen = 1 + 8 + 8 + 8 + IDLen + 1 + 4

// AppendBinary appends the binary form of r to b, for storage or transport
// by a plugin. The form holds r.State, a master secret: a plugin must
// encrypt it before it leaves the process.
func (r Record) AppendBinary(b []byte) ([]byte, error) {
	if len(r.ServerName) > MaxServerNameLen {
		return b, fmt.Errorf("session: server name of %d bytes exceeds %d", len(r.ServerName), MaxServerNameLen)
	}
	if uint64(len(r.State)) > 1<<32-1 {
		return b, errors.New("session: state too long for a record")
	}
	b = append(b, recordVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Expires.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, uint64(r.ChainStart.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, r.Chain)
	b = append(b, r.Parent[:]...)
	b = append(b, byte(len(r.ServerName)))
	b = append(b, r.ServerName...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.State)))
	return append(b, r.State...), nil
}

// MarshalBinary returns the binary form of r (see AppendBinary).
func (r Record) MarshalBinary() ([]byte, error) {
	return r.AppendBinary(make([]byte, 0, recordHeaderLen+len(r.ServerName)+len(r.State)))
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
	if n > MaxServerNameLen || len(rest) < n+4 {
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
