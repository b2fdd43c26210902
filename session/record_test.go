package session_test

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/session"
)

func TestRecordBinary(t *testing.T) {
	r := session.Record{State: []byte{1, 2, 3}, ServerName: "a.example", Expires: time.Unix(100, 7), Chain: 42, ChainStart: time.Unix(50, 0),
		Parent: session.ID{1, 2, 3}}
	b, err := r.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	var got session.Record
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if string(got.State) != string(r.State) || got.ServerName != r.ServerName || !got.Expires.Equal(r.Expires) ||
		got.Chain != r.Chain || !got.ChainStart.Equal(r.ChainStart) || got.Parent != r.Parent {
		t.Fatalf("round trip = %+v, want %+v", got, r)
	}
	for _, bad := range [][]byte{nil, b[:10], b[:len(b)-1], append(b, 0), append([]byte{9}, b[1:]...)} {
		var x session.Record
		if err := x.UnmarshalBinary(bad); err == nil {
			t.Fatalf("UnmarshalBinary(%x) succeeded", bad)
		}
	}
	long := session.Record{ServerName: string(make([]byte, 300))}
	if _, err := long.AppendBinary(nil); err == nil {
		t.Fatal("a 300-byte server name was encoded")
	}
}
