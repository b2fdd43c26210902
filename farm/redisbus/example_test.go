package redisbus_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// Two nodes of a farm on one Redis server (here the one at 127.0.0.1:6379):
// what one node publishes, the other receives (a node never hears its own
// messages), and the records one node stores, any node reads, until their
// TTL. A program gives the Transport to farm.Join as both Bus and Store
// (see the farm package's example); the farm seals every message and
// record, so Redis only ever holds opaque bytes.
func Example() {
	tr, err := redisbus.Open("redis://127.0.0.1:6379/0", "example-redisbus")
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	peer, err := redisbus.Open("redis://127.0.0.1:6379/0", "example-redisbus") // another node
	if err != nil {
		log.Fatal(err)
	}
	defer peer.Close()
	fmt.Println(tr.Channel())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel() // ends the subscription
	got := make(chan []byte, 1)
	up := make(chan bool, 1)
	go peer.Subscribe(ctx, func(msg []byte) {
		select {
		case got <- msg:
		default: // this example reads one message
		}
	}, func(ok bool, err error) {
		if ok {
			select {
			case up <- true:
			default:
			}
		}
	})
	<-up
	if err := tr.Publish(ctx, []byte("sealed message")); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("received %q\n", <-got)

	err = tr.PutRecords(ctx, transport.Item{Key: "s:0102", Value: []byte("sealed session"), TTL: time.Minute})
	if err != nil {
		log.Fatal(err)
	}
	v, err := peer.GetRecord(ctx, "s:0102")
	fmt.Printf("stored %q under %q, %v\n", v, tr.RecordKey("s:0102"), err)
	// TakeRecord reads and deletes in one atomic step (a script that also
	// leaves the record's retirement mark), as single use needs: only one
	// node gets the record.
	v, err = peer.TakeRecord(ctx, "s:0102")
	fmt.Printf("taken %q, %v\n", v, err)
	_, err = tr.GetRecord(ctx, "s:0102")
	fmt.Println("then:", errors.Is(err, transport.ErrNotFound))
	// Output:
	// tlsfarm:{example-redisbus}:bus
	// received "sealed message"
	// stored "sealed session" under "tlsfarm:example-redisbus:{s:0102}", <nil>
	// taken "sealed session", <nil>
	// then: true
}

// Open takes one URL per kind of Redis deployment; every node of a farm
// uses the same. Open dials nothing (a transport opened while Redis is down
// works once it is up), so this example runs without any of these servers.
// It prints what each URL gives, never the URL, which may hold a password.
func ExampleOpen() {
	for _, u := range []struct{ kind, url string }{
		{"server", "redis://127.0.0.1:6379/0"},
		{"server over TLS, with an ACL user", "rediss://tlsfarm:PASSWORD@redis.example.com:6380/0?dial_timeout=2s"},
		{"cluster", "redis+cluster://10.0.0.1:7000?addr=10.0.0.2:7000&addr=10.0.0.3:7000&reload=2s"},
		{"sentinels", "redis+sentinel://10.0.0.1:26379?master_name=tlsfarm&addr=10.0.0.2:26379&addr=10.0.0.3:26379"},
		{"server, one shared channel", "redis://127.0.0.1:6379/0?echo=true"},
		{"server, with a cluster option", "redis://127.0.0.1:6379/0?reload=2s"},
	} {
		tr, err := redisbus.Open(u.url, "prod")
		if err != nil {
			fmt.Printf("%s: %v\n", u.kind, err)
			continue
		}
		fmt.Printf("%s: echo=%v\n", u.kind, tr.Echo)
		tr.Close()
	}
	// Output:
	// server: echo=false
	// server over TLS, with an ACL user: echo=false
	// cluster: echo=false
	// sentinels: echo=false
	// server, one shared channel: echo=true
	// server, with a cluster option: redisbus: the reload option is for redis+cluster URLs
}

// New makes a transport on a go-redis client of the program's own, for
// options a URL cannot give (a custom dialer or TLS configuration, hooks
// for tracing). The client must time out by context, and the program closes
// it: the transport's Close leaves it open.
func ExampleNew() {
	c := redis.NewClient(&redis.Options{
		Addr:                  "127.0.0.1:6379",
		ContextTimeoutEnabled: true, // or lookups ignore their deadlines
	})
	defer c.Close()
	tr, err := redisbus.New(c, "example-redisbus-new")
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	fmt.Println("ping:", tr.Ping(ctx))
	// Output:
	// ping: <nil>
}
