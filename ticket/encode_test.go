package ticket_test

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

func encodedStates() map[string]ticket.State {
	ks := fixedKeys(5)
	return map[string]ticket.State{
		"current only":      {Current: ks[0]},
		"fresh ring":        {Current: ks[0], Next: ks[1], Rotated: time.Date(2030, 1, 1, 0, 0, 0, 1, time.UTC)},
		"full":              {Epoch: 1<<63 + 5, Current: ks[0], Next: ks[1], Previous: ks[2:], Rotated: time.Unix(1e9, 42)},
		"nothing staged":    {Epoch: 9, Current: ks[4], Previous: ks[:4], Rotated: time.Unix(-1e9, 0)},
		"max epoch":         {Epoch: math.MaxUint64, Current: ks[0], Rotated: time.Unix(0, math.MaxInt64)},
		"earliest rotation": {Epoch: 1, Current: ks[0], Rotated: time.Unix(0, math.MinInt64)},
	}
}

func TestStateBytesRoundTrip(t *testing.T) {
	for name, s := range encodedStates() {
		t.Run(name, func(t *testing.T) {
			b, err := s.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			if want := 83 + 32*len(s.Previous); len(b) != want {
				t.Errorf("encoding is %d bytes, want %d", len(b), want)
			}
			got, err := ticket.ParseState(b)
			if err != nil {
				t.Fatal(err)
			}
			checkState(t, got, s)
			clear(b) // the parsed State is a copy
			checkState(t, got, s)
		})
	}
}

func TestStateBytesRejects(t *testing.T) {
	ks := fixedKeys(2)
	tests := []struct {
		name    string
		state   ticket.State
		wantErr string
	}{
		{"zero state", ticket.State{}, "State.Current is the all-zero key"},
		{"duplicate", ticket.State{Current: ks[0], Previous: []ticket.Key{ks[1], ks[0]}}, "State.Previous[1] is the same key as State.Current"},
		{"rotated too early", ticket.State{Current: ks[0], Rotated: time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC)}, "outside the encodable range"},
		{"rotated too late", ticket.State{Current: ks[0], Rotated: time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)}, "outside the encodable range"},
		{"too many keys", ticket.State{Current: ks[0], Previous: make([]ticket.Key, 1<<16)}, "more than the 65535 the encoding holds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "too many keys" {
				for i := range tt.state.Previous {
					tt.state.Previous[i] = ticket.Key{byte(i), byte(i >> 8), 1}
				}
			}
			b, err := tt.state.Bytes()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Bytes: err = %v, want one containing %q", err, tt.wantErr)
			}
			if b != nil {
				t.Error("Bytes returned bytes with its error")
			}
		})
	}
}

func TestParseStateRejects(t *testing.T) {
	ks := fixedKeys(3)
	valid, err := ticket.State{Epoch: 3, Current: ks[0], Next: ks[1], Previous: ks[2:]}.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(valid)) }
	tests := []struct {
		name    string
		in      []byte
		wantErr string
	}{
		{"empty", nil, "encoded State is 0 bytes, shorter than its 83-byte header"},
		{"truncated header", valid[:82], "encoded State is 82 bytes"},
		{"unknown version", edit(func(b []byte) []byte { b[0] = 2; return b }), "unknown version 2"},
		{"truncated key", valid[:len(valid)-1], "announces 1 previous keys in 31 bytes, want 32 bytes"},
		{"trailing bytes", append(bytes.Clone(valid), 0), "announces 1 previous keys in 33 bytes"},
		{"count too high", edit(func(b []byte) []byte { b[82] = 2; return b }), "announces 2 previous keys in 32 bytes, want 64 bytes"},
		{"zero current", edit(func(b []byte) []byte { clear(b[17:49]); return b }), "State.Current is the all-zero key"},
		{"next repeats current", edit(func(b []byte) []byte { copy(b[49:81], ks[0][:]); return b }), "State.Next is the same key as State.Current"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ticket.ParseState(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseState: err = %v, want one containing %q", err, tt.wantErr)
			}
			if s.Current != (ticket.Key{}) || s.Previous != nil || s.Epoch != 0 {
				t.Errorf("ParseState returned %+v with its error", s)
			}
		})
	}
}

// FuzzParseState checks that ParseState never panics and that whatever it
// accepts encodes back to the same bytes: the encoding is canonical, so two
// servers that agree on a State agree on its bytes.
func FuzzParseState(f *testing.F) {
	for _, s := range encodedStates() {
		b, err := s.Bytes()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)-1])
	}
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add(make([]byte, 83))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ticket.ParseState(b)
		if err != nil {
			return
		}
		out, err := s.Bytes()
		if err != nil {
			t.Fatalf("Bytes of a parsed State: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip changed the encoding:\n in %x\nout %x", b, out)
		}
	})
}
