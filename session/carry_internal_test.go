package session

import (
	"context"
	"crypto/aes"
	"crypto/tls"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
)

// admitAll is a Farm that loads nothing and admits every carried copy.
type admitAll struct{}

func (admitAll) Load(context.Context, ID) (*Record, error)  { return nil, nil }
func (admitAll) Claim(context.Context, ID) (bool, error)    { return true, nil }
func (admitAll) Release(ID, Record)                         {}
func (admitAll) AdmitCarried(_ ID, r Record) (Record, bool) { return r, true }

// FuzzCarriedIdentity feeds arbitrary identities, and mutations of a real
// carried ticket, to the unwrap of a cache that does not hold the session
// and whose farm admits every copy: nothing may panic, and whatever
// resumes is the session the identity names.
func FuzzCarriedIdentity(f *testing.F) {
	keys := []IDKey{{ID: 7, Key: [32]byte{1, 2, 3}}}
	tk := [][32]byte{{9, 9, 9}}
	cert, pool := tlstest.SharedCert()
	issuer, err := New(nil)
	if err != nil {
		f.Fatal(err)
	}
	defer issuer.Close()
	issuer.SetIDKeys(keys...)
	issuer.SetCarry(true)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	cfg.SetSessionTicketKeys(tk)
	issuer.Install(cfg)
	srv := tlstest.Serve(f, "n1", cfg, issuer.HandshakeComplete)
	shared := &tlstest.SharedCache{}
	tlstest.MustDial(f, srv.Addr, tlstest.ClientConfig(pool, "localhost", tls.VersionTLS13, shared))
	cs, _ := shared.Get("")
	ticket, _, err := cs.ResumptionState()
	if err != nil || len(ticket) < carriedMin || ticket[0] != carriedVersion {
		f.Fatalf("no carried ticket: %d bytes, %v", len(ticket), err)
	}

	c, err := New(&Config{SweepInterval: -1})
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	c.SetIDKeys(keys...)
	c.Join(admitAll{}, time.Second)
	src := &tls.Config{Certificates: []tls.Certificate{cert}}
	src.SetSessionTicketKeys(tk)

	f.Add(ticket)
	f.Add(ticket[:carriedMin])
	f.Add(ticket[:len(ticket)-1])
	f.Add(ticket[:1+IDLen])
	bad := append([]byte(nil), ticket...)
	bad[len(bad)-1] ^= 1
	f.Add(bad)
	f.Add([]byte{carriedVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		var tmp [aes.BlockSize]byte
		r := c.unwrap(context.Background(), b, tls.ConnectionState{ServerName: "localhost"}, src, &tmp)
		// A fuzzing worker issues a session of its own (its own ID): what
		// resumes must be the ID the identity names.
		if r.ss != nil && !(len(b) >= carriedMin && b[0] == carriedVersion && ID(b[1:1+IDLen]) == r.id) && !(len(b) == IDLen && ID(b) == r.id) {
			t.Fatalf("identity %x resumed %v", b, r.id)
		}
	})
}

// TestStatelessTicketLikeCarried: a stateless ticket whose first byte
// happens to be the carried version's (1 in 256: it is random) resumes as
// any other; it used to be taken for a carried ticket with a forged ID.
func TestStatelessTicketLikeCarried(t *testing.T) {
	cert, pool := tlstest.SharedCert()
	c, err := New(&Config{Mode: Stateless, SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	cfg.SetSessionTicketKeys([][32]byte{{4, 5, 6}})
	c.Install(cfg)
	srv := tlstest.Serve(t, "n1", cfg, c.HandshakeComplete)
	shared := &tlstest.SharedCache{}
	tlstest.MustDial(t, srv.Addr, tlstest.ClientConfig(pool, "localhost", tls.VersionTLS13, shared))
	cs, _ := shared.Get("")
	ticket, _, _ := cs.ResumptionState()
	var tmp [aes.BlockSize]byte
	st := tls.ConnectionState{ServerName: "localhost"}
	ss, err := cfg.DecryptTicket(ticket, st)
	if err != nil || ss == nil {
		t.Fatal("the ticket does not decrypt", err)
	}
	for range 5000 {
		b, err := cfg.EncryptTicket(st, ss)
		if err != nil {
			t.Fatal(err)
		}
		if b[0] != carriedVersion {
			continue
		}
		if r := c.unwrap(context.Background(), b, st, cfg, &tmp); r.ss == nil {
			t.Fatal("a stateless ticket starting with the carried version did not resume")
		}
		if _, ok := c.TicketIssuedAt(b, ss); !ok {
			t.Fatal("TicketIssuedAt does not read its binding")
		}
		return
	}
	t.Fatal("no ticket starting with the carried version in 5000")
}
