package natsbus_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
)

// TestSubscribeRefusedIsNotUp: a bus subscription the server refuses (the
// node's user may not subscribe to the farm's subject) is an outage, with
// the server's reason, not a subscription in place. nats.go only logs the
// refusal; the transport used to report the bus up, and the node heard
// nothing from its peers (no revocation, no retirement, no tally to
// show a loss) while it believed itself connected.
func TestSubscribeRefusedIsNotUp(t *testing.T) {
	t.Parallel()
	conf := filepath.Join(t.TempDir(), "nats.conf")
	writeConf := func(perms string) {
		if err := os.WriteFile(conf, []byte(`authorization {
  users = [
    {user: node, password: pw, permissions: {publish: ">", subscribe: `+perms+`}}
  ]
}
`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeConf(`{allow: ">", deny: "tlsfarm.>"}`)
	srv := startNATS(t, "-c", conf)
	name := farmtest.FarmName(t)
	tr, err := natsbus.Open(srv.URL("node:pw@"), name, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type state struct {
		up  bool
		err error
	}
	states := make(chan state, 16)
	done := make(chan error, 1)
	go func() {
		done <- tr.Subscribe(ctx, func([]byte) {}, func(up bool, err error) { states <- state{up, err} })
	}()
	up := false
	for {
		select {
		case s := <-states:
			up = s.up
			if !s.up && s.err != nil && strings.Contains(strings.ToLower(s.err.Error()), "permission") {
				t.Logf("reported down: %v", s.err)
				return
			}
		case err := <-done:
			if err == nil || errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Subscribe returned %v, up %t, without saying the server refused the subscription", err, up)
			}
			if !strings.Contains(strings.ToLower(err.Error()), "permission") {
				t.Fatalf("Subscribe returned %v: not the server's refusal", err)
			}
			if strings.Contains(err.Error(), "pw@") {
				t.Fatalf("error shows the password: %v", err)
			}
			t.Logf("Subscribe returned: %v", err)
			subscribeOnceAllowed(t, srv, tr, name, writeConf)
			return
		}
	}
}

// subscribeOnceAllowed lets the user subscribe,
// and checks that Subscribe, called again as the farm does after a failed
// one, comes up and hears a peer: the refusal seen before is not taken for
// a new one.
func subscribeOnceAllowed(t *testing.T, srv *natsServer, tr *natsbus.Transport, farmName string, writeConf func(string)) {
	// The operator fixes the permissions (restarting the server: it
	// refuses to reload a configuration while its JetStream directory
	// comes from the command line). The client logs in again, with the
	// old refusal still its last error.
	writeConf(`">"`)
	before := tr.Conn().Stats().Reconnects
	srv.Kill()
	srv.Restart()
	waitReconnect(t, tr, before)
	peer, err := natsbus.Open(srv.URL("node:pw@"), farmName, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	deadline := time.Now().Add(10 * time.Second)
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		got := make(chan struct{}, 1)
		upc := make(chan bool, 16)
		done := make(chan error, 1)
		go func() {
			done <- tr.Subscribe(ctx, func([]byte) {
				select {
				case got <- struct{}{}:
				default:
				}
			}, func(up bool, _ error) { upc <- up })
		}()
		var err error
	wait:
		for {
			select {
			case <-upc:
			case <-got:
				cancel()
				<-done
				t.Logf("Subscribe heard a peer after the permissions were fixed (attempt %d)", attempt)
				return
			case err = <-done:
				break wait
			case <-time.After(50 * time.Millisecond):
				peer.Publish(ctx, []byte("hello"))
			}
		}
		cancel()
		if time.Now().After(deadline) {
			t.Fatalf("Subscribe after the permissions were fixed: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestPublishRefusedFails: a batch the server refuses (the node's user may
// not publish to the farm's subject) fails, with the server's reason.
// nats.go only logs the refusal; Publish used to return nil, and the farm
// counted as sent what no peer would ever hear.
func TestPublishRefusedFails(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(conf, []byte(`authorization {
  users = [
    {user: node, password: pw, permissions: {publish: {allow: ">", deny: "tlsfarm.>"}, subscribe: ">"}}
  ]
}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startNATS(t, "-c", conf)
	tr, err := natsbus.Open(srv.URL("node:pw@"), farmtest.FarmName(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for !tr.Conn().IsConnected() {
		if ctx.Err() != nil {
			t.Fatal("not connected")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := range 2 {
		err := tr.Publish(ctx, []byte("a"), []byte("b"))
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), "permission") {
			t.Fatalf("publish %d to a subject the user may not publish to: %v", i+1, err)
		}
		if strings.Contains(err.Error(), "pw@") {
			t.Fatalf("error shows the password: %v", err)
		}
		t.Logf("publish %d: %v", i+1, err)
	}
}
