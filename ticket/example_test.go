package ticket_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"net"
	"slices"
	"time"

	"github.com/tlsfarm/tlsfarm/ticket"
)

// A server whose ticket keys rotate every 12 hours, with the two previous
// keys still accepted, and with the same keys for every server name.
func Example() {
	ring, err := ticket.NewRing(ticket.RingConfig{Keep: 2, Interval: 12 * time.Hour})
	if err != nil {
		log.Fatal(err)
	}

	cfg := &tls.Config{ /* Certificates: ... */ }
	perName := cfg.Clone() // handed out by GetConfigForClient: register it too
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if hello.ServerName == "api.example.com" {
			return perName, nil
		}
		return nil, nil
	}
	unregister := ring.Register(cfg, perName)
	defer unregister()

	// Keys may also come from outside, as with ATS's TSSslTicketKeyUpdate:
	// the first encrypts, all decrypt, newest first.
	newest, _ := ticket.NewKey()
	older, _ := ticket.NewKey()
	if err := ring.Update(newest, older); err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ring.Run(ctx) }()

	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		log.Fatal(err)
	}
	go serve(ln)

	// ... until shutdown:
	ln.Close()
	cancel()
	fmt.Println("Run:", <-done)
	st := ring.Status()
	fmt.Println("epoch:", st.Epoch, "keys:", st.Keys, "configs:", st.Configs)
	fmt.Println("current is newest:", st.Current == newest.String())
	// Output:
	// Run: context canceled
	// epoch: 1 keys: 2 configs: 2
	// current is newest: true
}

func serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

// A farm's key rotation: the node that holds the rotation lease computes the
// next State, publishes it (sealed), and every node installs it with Set.
// Each new key was staged a full period before it encrypts, so servers that
// apply a State a little late still read tickets from those that did not.
func ExampleRing_Set() {
	leader, _ := ticket.NewRing(ticket.RingConfig{})
	follower, _ := ticket.NewRing(ticket.RingConfig{})

	// Bootstrap: the farm adopts the leader's keys as epoch 1.
	st := leader.State()
	st.Epoch = 1
	for _, r := range []*ticket.Ring{leader, follower} {
		if err := r.Set(st); err != nil {
			log.Fatal(err)
		}
	}

	// Each period: compute, publish, install everywhere.
	next, err := st.Rotate(time.Now(), ticket.DefaultKeep)
	if err != nil {
		log.Fatal(err)
	}
	// b, _ := next.Bytes(); seal and publish b; peers ParseState it...
	for _, r := range []*ticket.Ring{leader, follower} {
		if err := r.Set(next); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println(follower.State().Current == st.Next, follower.Status().Epoch)

	// A repeated or reordered announcement is refused.
	fmt.Println(follower.Set(st))
	// Output:
	// true 2
	// ticket: key set epoch is not newer than the one in use: got epoch 1, in use 2
}

// A single server's rotation: the key staged one period ahead starts
// encrypting, a fresh key is staged, and the key that encrypted until now
// only decrypts, for Keep more rotations.
func ExampleRing_Rotate() {
	ring, err := ticket.NewRing(ticket.RingConfig{Keep: 1})
	if err != nil {
		log.Fatal(err)
	}
	before := ring.State()
	if err := ring.Rotate(); err != nil {
		log.Fatal(err)
	}
	after := ring.State()
	fmt.Println("staged key now encrypts:", after.Current == before.Next)
	fmt.Println("old key still decrypts:", after.Previous[0] == before.Current)
	fmt.Println("epoch:", after.Epoch, "keys:", ring.Status().Keys, "staged:", ring.Status().Staged)

	// One rotation later the old key is past Keep and decrypts nothing.
	if err := ring.Rotate(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("old key kept:", slices.Contains(ring.State().Keys(), before.Current))
	// Output:
	// staged key now encrypts: true
	// old key still decrypts: true
	// epoch: 1 keys: 3 staged: true
	// old key kept: false
}
