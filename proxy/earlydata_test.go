package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"testing/synctest"
	"time"
)

// TestSessionIssuedReadsCreatedAt checks that sessionIssued finds the issue
// time in crypto/tls's serialization, and refuses what is not a TLS 1.3
// server session: if a Go release moves the field, this fails.
func TestSessionIssuedReadsCreatedAt(t *testing.T) {
	cert := mustSelfSigned(t, "localhost")
	got := make(chan *tls.SessionState, 1)
	srv := &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS13,
		WrapSession: func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
			select {
			case got <- ss:
			default:
			}
			return []byte("t"), nil
		}}
	cc, sc := net.Pipe()
	defer cc.Close()
	defer sc.Close()
	go func() {
		s := tls.Server(sc, srv)
		if s.Handshake() == nil {
			s.Write([]byte("x"))
		}
	}()
	c := tls.Client(cc, client("localhost", cert))
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	ss := <-got
	issued, ok := sessionIssued(ss)
	if !ok || time.Since(issued) > 5*time.Second || time.Until(issued) > time.Second {
		t.Fatalf("issued %v (ok %v), want about now", issued, ok)
	}
	if _, ok := sessionIssued(&tls.SessionState{}); ok {
		t.Error("an empty session state has an issue time")
	}
}

// TestLocalStrikes runs in a synctest bubble: the register reads
// time.Now, which there is a fake clock that moves only when the test
// sleeps, so that "b" (200 ms) expires exactly when the test says and not
// while a loaded machine runs the steps before.
func TestLocalStrikes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newLocalStrikes(2)
		ctx := context.Background()
		steps := []struct {
			id    string
			ttl   time.Duration
			fresh bool
			err   bool
		}{
			{"a", time.Hour, true, false},
			{"a", time.Hour, false, false}, // a replay
			{"b", 200 * time.Millisecond, true, false},
			{"c", time.Hour, false, true}, // full: "b" has not expired yet
		}
		for i, s := range steps {
			fresh, err := r.strike(ctx, []byte(s.id), time.Time{}, s.ttl)
			if fresh != s.fresh || (err != nil) != s.err {
				t.Fatalf("step %d (%s): fresh %v, err %v", i, s.id, fresh, err)
			}
		}
		time.Sleep(199 * time.Millisecond)
		if _, err := r.strike(ctx, []byte("c"), time.Time{}, time.Hour); err == nil {
			t.Fatal("c was taken before b expired")
		}
		time.Sleep(time.Millisecond)
		if fresh, err := r.strike(ctx, []byte("c"), time.Time{}, time.Hour); !fresh || err != nil {
			t.Fatalf("after b expired: fresh %v, err %v", fresh, err)
		}
		if fresh, _ := r.strike(ctx, []byte("a"), time.Time{}, time.Hour); fresh {
			t.Fatal("a was forgotten while its time lasts")
		}
	})
}
