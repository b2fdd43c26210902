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
