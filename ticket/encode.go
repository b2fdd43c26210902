package ticket

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"
)

// The binary encoding of a State, version 1, in this order:
//
//	version   1 byte, 1
//	epoch     8 bytes, big-endian
//	rotated   8 bytes, big-endian nanoseconds since the Unix epoch (two's
//	          complement); 0 stands for the zero Time
//	current   32 bytes
//	next      32 bytes, all zeros if no key is staged
//	count     2 bytes, big-endian: the number of previous keys
//	previous  count times 32 bytes, newest first
const (
	encodingVersion = 1
	headerLen       = 1 + 8 + 8 + KeyLen + KeyLen + 2
	maxPrevious     = math.MaxUint16
)

var (
	minEncodedTime = time.Unix(0, math.MinInt64)
	maxEncodedTime = time.Unix(0, math.MaxInt64)
)

// Bytes returns s in a compact binary form that ParseState reads back. The
// form holds every key in the clear: seal it (for example with AES-GCM under
// a key only the farm knows) before it is sent or stored. Its layout is
// fixed by its first byte, a version number, so that servers of different
// releases can share key sets.
//
// Bytes returns an error if s is not a valid key set (see Ring.Set), has more
// than 65535 previous keys, or has a Rotated time outside the years 1678 to
// 2262. The instant of the Unix epoch reads back as the zero Time.
func (s State) Bytes() ([]byte, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	if len(s.Previous) > maxPrevious {
		return nil, fmt.Errorf("ticket: State has %d previous keys, more than the %d the encoding holds", len(s.Previous), maxPrevious)
	}
	var nanos int64
	if !s.Rotated.IsZero() {
		if s.Rotated.Before(minEncodedTime) || s.Rotated.After(maxEncodedTime) {
			return nil, fmt.Errorf("ticket: State.Rotated %v is outside the encodable range", s.Rotated)
		}
		nanos = s.Rotated.UnixNano()
	}
	b := make([]byte, 0, headerLen+KeyLen*len(s.Previous))
	b = append(b, encodingVersion)
	b = binary.BigEndian.AppendUint64(b, s.Epoch)
	b = binary.BigEndian.AppendUint64(b, uint64(nanos))
	b = append(b, s.Current[:]...)
	b = append(b, s.Next[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(s.Previous)))
	for _, k := range s.Previous {
		b = append(b, k[:]...)
	}
	return b, nil
}

// ParseState parses a State encoded by State.Bytes. It returns an error if b
// is not such an encoding or holds an invalid key set. The State is a copy: b
// may be wiped afterwards.
func ParseState(b []byte) (State, error) {
	if len(b) < headerLen {
		return State{}, fmt.Errorf("ticket: encoded State is %d bytes, shorter than its %d-byte header", len(b), headerLen)
	}
	if b[0] != encodingVersion {
		return State{}, fmt.Errorf("ticket: encoded State has unknown version %d", b[0])
	}
	var s State
	p := b[1:]
	s.Epoch = binary.BigEndian.Uint64(p)
	p = p[8:]
	if nanos := int64(binary.BigEndian.Uint64(p)); nanos != 0 {
		s.Rotated = time.Unix(0, nanos)
	}
	p = p[8:]
	s.Current = Key(p[:KeyLen])
	p = p[KeyLen:]
	s.Next = Key(p[:KeyLen])
	p = p[KeyLen:]
	n := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	if len(p) != n*KeyLen {
		return State{}, fmt.Errorf("ticket: encoded State announces %d previous keys in %d bytes, want %d bytes", n, len(p), n*KeyLen)
	}
	if n > 0 {
		s.Previous = make([]Key, n)
		for i := range s.Previous {
			s.Previous[i] = Key(p[i*KeyLen:])
		}
	}
	if err := s.validate(); err != nil {
		s.wipe()
		return State{}, err
	}
	return s, nil
}
