package session_test

import (
	"crypto/tls"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestInsertRefusesMalformed: Insert refuses, with an error that says so, a
// record that names its own session as its parent (inserted, it cut itself
// to the resumption grace and became its own child), and a server name
// longer than 253 bytes in lower case, the form the cache keeps it in (a
// name of invalid UTF-8 triples in length: the record the cache then
// handed to its hooks had no binary form, so a farm could not send it).
func TestInsertRefusesMalformed(t *testing.T) {
	c := newCache(t, nil)
	id := c.NewID()
	r := record(16, 1, time.Hour)
	r.Parent = id
	if err := c.Insert(id, r, session.OriginPeer); !errors.Is(err, session.ErrInvalidRecord) {
		got, _ := lookup(c, id)
		t.Fatalf("Insert of a record that is its own parent = %v (expires in %v), want %v",
			err, time.Until(got.Expires).Round(time.Second), session.ErrInvalidRecord)
	}

	var seen []session.Record
	c.AddHook(session.EventNew, func(ev session.Event) { seen = append(seen, ev.Record) })
	r = record(16, 1, time.Hour)
	r.ServerName = strings.Repeat("\xff", 200)
	err := c.Insert(c.NewID(), r, session.OriginPeer)
	for _, rec := range seen {
		if _, aerr := rec.AppendBinary(nil); aerr != nil {
			t.Fatalf("Insert = %v, and its EventNew record has no binary form: %v", err, aerr)
		}
	}
	if !errors.Is(err, session.ErrInvalidRecord) {
		t.Fatalf("Insert of a name 600 bytes long in lower case = %v, want %v", err, session.ErrInvalidRecord)
	}
}

// TestHandshakeServerNameInLowerCase: a handshake whose server name is
// longer than 253 bytes in lower case (a client may send invalid UTF-8;
// crypto/tls takes it) stores no session, as one longer on the wire does:
// its record, with the name in lower case, has no binary form.
func TestHandshakeServerNameInLowerCase(t *testing.T) {
	s := newServer(t, nil)
	var bad []error
	var mu sync.Mutex
	s.cache.AddHook(session.EventNew, func(ev session.Event) {
		if _, err := ev.Record.AppendBinary(nil); err != nil {
			mu.Lock()
			bad = append(bad, err)
			mu.Unlock()
		}
	})
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		ccfg := s.client(v, strings.Repeat("\xff", 100), tls.NewLRUClientSessionCache(1))
		ccfg.InsecureSkipVerify = true
		if _, err := tlstest.Dial(s.srv.Addr, ccfg); err != nil {
			t.Fatalf("handshake: %v", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("a handshake stored a session whose record has no binary form: %v", bad[0])
	}
	if st := stats(s.cache); st.Size != 0 || st.WrapErrors != 2 {
		t.Fatalf("%d sessions stored, %d wrap errors; want 0 and 2", st.Size, st.WrapErrors)
	}
}
