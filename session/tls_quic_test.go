package session_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"testing"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// quicRun is what one in-memory QUIC handshake (crypto/tls's QUIC API, no
// packets) showed the server.
type quicRun struct {
	resumed *tls.SessionState // the session the server resumed (QUICResumeSession)
	early   bool              // the server installed 0-RTT read keys
}

// quicHandshake runs one QUIC handshake between cfg and scfg, then has the
// server issue a ticket with extra in its Extra and EarlyData set, as quic-go
// does, and the client store it.
func quicHandshake(t *testing.T, ccfg, scfg *tls.Config, extra []byte) quicRun {
	t.Helper()
	ctx := context.Background()
	cli := tls.QUICClient(&tls.QUICConfig{TLSConfig: ccfg, EnableSessionEvents: true})
	srv := tls.QUICServer(&tls.QUICConfig{TLSConfig: scfg, EnableSessionEvents: true})
	cli.SetTransportParameters(nil)
	if err := cli.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var run quicRun
	done := [2]bool{}
	// pump moves events until neither side has any.
	pump := func() {
		for moved := true; moved; {
			moved = false
			for i, c := range []*tls.QUICConn{cli, srv} {
				peer := []*tls.QUICConn{srv, cli}[i]
				for {
					ev := c.NextEvent()
					if ev.Kind == tls.QUICNoEvent {
						break
					}
					moved = true
					switch ev.Kind {
					case tls.QUICWriteData:
						if err := peer.HandleData(ev.Level, ev.Data); err != nil {
							t.Fatal(err)
						}
					case tls.QUICTransportParametersRequired:
						c.SetTransportParameters(nil)
					case tls.QUICHandshakeDone:
						done[i] = true
					case tls.QUICResumeSession:
						if c == srv {
							run.resumed = ev.SessionState
						}
					case tls.QUICStoreSession:
						if err := c.StoreSession(ev.SessionState); err != nil {
							t.Fatal(err)
						}
					case tls.QUICSetReadSecret:
						if c == srv && ev.Level == tls.QUICEncryptionLevelEarly {
							run.early = true
						}
					}
				}
			}
		}
	}
	pump()
	if !done[0] || !done[1] {
		t.Fatal("QUIC handshake did not complete")
	}
	if err := srv.SendSessionTicket(tls.QUICSessionTicketOptions{EarlyData: true, Extra: [][]byte{extra}}); err != nil {
		t.Fatal(err)
	}
	pump()
	return run
}

// TestQUICSessionKeepsExtraAndEarlyData: what quic-go puts in a session
// (an Extra entry, EarlyData) comes back unchanged when the cache resumes
// it, in every mode, and crypto/tls then accepts 0-RTT with it.
func TestQUICSessionKeepsExtraAndEarlyData(t *testing.T) {
	for _, mode := range []session.Mode{session.Stateful, session.Stateless, session.Mixed} {
		t.Run(mode.String(), func(t *testing.T) {
			cert, pool := tlstest.Cert(t, "localhost")
			cache, err := session.New(&session.Config{Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			defer cache.Close()
			scfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13, NextProtos: []string{"h3"}}
			scfg.SetSessionTicketKeys([][32]byte{{1, 2, 3}})
			cache.Install(scfg)
			ccfg := tlstest.ClientConfig(pool, "localhost", tls.VersionTLS13, tls.NewLRUClientSessionCache(4))
			ccfg.NextProtos = []string{"h3"}
			extra := []byte("quic-go1 transport parameters")

			if r := quicHandshake(t, ccfg, scfg, extra); r.resumed != nil {
				t.Fatal("the first handshake resumed")
			}
			r := quicHandshake(t, ccfg, scfg, extra)
			if r.resumed == nil {
				t.Fatal("the session did not resume")
			}
			found := 0
			for _, x := range r.resumed.Extra {
				if bytes.Equal(x, extra) {
					found++
				}
			}
			if found != 1 {
				t.Errorf("the resumed session's Extra holds quic-go's entry %d times, want 1 (%q)", found, r.resumed.Extra)
			}
			if !r.resumed.EarlyData {
				t.Error("the resumed session lost EarlyData")
			}
			if !r.early {
				t.Error("crypto/tls did not accept 0-RTT with the resumed session")
			}
		})
	}
}
