package natsembed_test

import (
	"fmt"
	"log"
	"strings"

	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/natsbus/natsembed"
)

// A zero-setup farm: one embedded server on a free loopback port, and a
// transport per node connected to it.
func Example() {
	srv, err := natsembed.Start(nil)
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown()
	fmt.Println(strings.HasPrefix(srv.URL(), "nats://127.0.0.1:"))

	tr, err := natsbus.Open(srv.URL(), "demo", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	// tr is the transport.Bus and transport.Store of one node.
	fmt.Println(tr.Subject())
	// Output:
	// true
	// tlsfarm.demo.bus
}
