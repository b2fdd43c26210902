package natsbus_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/natsbus/natsembed"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// A farm's transport on an embedded server: what one node publishes, every
// other node receives (not the sender: a node drops its own messages, so
// the connection asks the server not to echo them), and the store keeps
// keys until their TTL. A real farm
// opens "nats://host:4222" (or a comma-separated list of a cluster's
// servers) and gives the transport to farm.Join as both Bus and Store.
func Example() {
	srv, err := natsembed.Start(nil)
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown()

	tr, err := natsbus.Open(srv.URL(), "prod", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	fmt.Println(tr.Subject(), tr.Bucket())
	peer, err := natsbus.Open(srv.URL(), "prod", nil) // another node
	if err != nil {
		log.Fatal(err)
	}
	defer peer.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan []byte, 1)
	up := make(chan bool, 1)
	go peer.Subscribe(ctx, func(msg []byte) { got <- msg }, func(ok bool, err error) {
		if ok {
			up <- true
		}
	})
	<-up
	if err := tr.Publish(ctx, []byte("sealed message")); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("received %q\n", <-got)

	if err := tr.PutRecords(ctx, transport.Item{Key: "s:0102", Value: []byte("sealed session"), TTL: time.Hour}); err != nil {
		log.Fatal(err)
	}
	v, err := tr.GetRecord(ctx, "s:0102")
	fmt.Printf("stored %q under %q, %v\n", v, tr.Key("s:0102"), err)
	// Output:
	// tlsfarm.prod.bus tlsfarm_prod
	// received "sealed message"
	// stored "sealed session" under "s.0102", <nil>
}
