package main

import (
	"io"

	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// openNATS opens the NATS transport: a Bus on a subject and a Store in a
// JetStream key-value bucket.
func openNATS(rawURL, farmName string) (transport.Bus, transport.Store, io.Closer, error) {
	t, err := natsbus.Open(rawURL, farmName, nil)
	if err != nil {
		return nil, nil, nil, err
	}
	return t, t, t, nil
}
